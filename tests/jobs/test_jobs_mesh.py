"""Jobs survive the gateway process: kill -9 mid-run, restart, or a second replica finishes it.

Real processes throughout: the four backend services of the session's local mesh (real models),
gateway processes started and killed here, and a real redis-server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobs_helpers import redis_server  # noqa: F401 (fixture)

from asr.common.v1 import progress_pb2
from asr.gateway.v1 import jobs_pb2 as jpb
from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
from asr_mesh.services.common.server import READY_PREFIX
from asr_mesh.services.gateway.jobs import JobRecord

pytestmark = pytest.mark.mesh

CLIP = "dia/conv0.flac"  # 30 s: long enough to be killed mid-transcription, short enough to rerun


class GatewayProcess:
    def __init__(self, mesh, state_dir: Path, store: str, log: Path):
        env = {
            **os.environ,
            "PYANNOTE_METRICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "ASR_STATE_DIR": str(state_dir),
            "ASR_GATEWAY_HOST": "127.0.0.1",
            "ASR_GATEWAY_PORT": "0",
            "ASR_GATEWAY_JOB_STORE": store,
            "ASR_GATEWAY_JOB_SPOOL_DIR": str(state_dir / "spool"),
            "ASR_GATEWAY_JOB_LEASE_S": "2",
            "ASR_GATEWAY_JOB_POLL_S": "0.2",
            "ASR_LOG_FORMAT": "text",
            **{
                f"ASR_GATEWAY_{name.upper()}_ADDRESS": mesh.services[name].address
                for name in ("preprocess", "transcription", "diarization", "merge")
            },
        }
        env.pop("ASR_PARENT_PID", None)
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "asr_mesh.services.gateway"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        line = self.process.stdout.readline().decode()
        if not line.startswith(READY_PREFIX):
            self.process.kill()
            pytest.fail(f"gateway did not start; see {log}")
        self.address = f"127.0.0.1:{line.split('port=')[1].split()[0]}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture()
def gateways(tmp_path):
    started: list[GatewayProcess] = []

    def start(mesh, store: str) -> GatewayProcess:
        gateway = GatewayProcess(mesh, tmp_path / "state", store, tmp_path / "gateway.log")
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def wait_until_transcribing(client: GatewayClient, job_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if (
            job.state == jpb.JOB_STATE_RUNNING
            and job.progress.stage == progress_pb2.STAGE_TRANSCRIPTION
        ):
            return
        assert job.state in (jpb.JOB_STATE_QUEUED, jpb.JOB_STATE_RUNNING), job
        time.sleep(0.1)
    pytest.fail("the job never started transcribing")


def check_finished(client: GatewayClient, job_id: str, attempts: int) -> None:
    job = client.wait_job(job_id, timeout_s=240)
    assert job.state == jpb.JOB_STATE_SUCCEEDED, job.error
    assert job.attempts == attempts and job.trace_id
    results = client.job_results(job_id)
    assert len(results.segments) >= 3 and "".join(s.text for s in results.segments).strip()
    document = json.loads(results.documents[0].content)
    assert document["trace_id"] == job.trace_id  # the rerun still belongs to the submit's trace


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_job_killed_with_its_gateway_finishes_after_a_restart(
    store, mesh, corpus, gateways, tmp_path, request
):
    url = request.getfixturevalue("redis_server").url if store == "redis" else ""
    if url:
        request.getfixturevalue("redis_server").flush()
    first = gateways(mesh, url)
    with GatewayClient(first.address) as client:
        job = client.submit_job(
            corpus / CLIP, TranscribeOptions(no_cache=True, quality_profile="fast")
        )
        wait_until_transcribing(client, job.job_id)
    first.kill()  # kill -9: no drain, the lease simply stops being renewed

    second = gateways(mesh, url)
    with GatewayClient(second.address) as client:
        check_finished(client, job.job_id, attempts=2)
    spool = tmp_path / "state" / "spool"
    deadline = time.monotonic() + 10  # removed just after the final state is written
    while any(spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(spool.iterdir())


def test_two_gateways_on_one_redis_the_survivor_finishes_the_job(
    mesh,
    corpus,
    gateways,
    redis_server,  # noqa: F811
):
    redis_server.flush()
    pair = [gateways(mesh, redis_server.url), gateways(mesh, redis_server.url)]
    with GatewayClient(pair[0].address) as client:
        job = client.submit_job(
            corpus / CLIP, TranscribeOptions(no_cache=True, quality_profile="fast")
        )
        wait_until_transcribing(client, job.job_id)
    owner = JobRecord.from_json(redis_server.client.get(f"asr:job:{job.job_id}")).owner
    pid = int(owner.rsplit("-", 3)[1])
    runner = next(g for g in pair if g.process.pid == pid)
    survivor = next(g for g in pair if g is not runner)
    runner.kill()
    with GatewayClient(survivor.address) as client:
        check_finished(client, job.job_id, attempts=2)
