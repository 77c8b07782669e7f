"""The job API and the result cache on real in-process gateways, against both stores.

Every test runs twice: on the embedded SQLite store and on a real redis-server (started once per
session on a free port). The chain's downstream services are replaced by `ScriptedStages`
(output derived from the uploaded bytes; slow or failing on demand); everything else is real.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from jobs_helpers import ScriptedStages, bad_audio, redis_server  # noqa: F401 (fixture)

from asr.gateway.v1 import jobs_pb2 as jpb
from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
from asr_mesh.services.common.errors import FailedPrecondition, InvalidInput, NotFound
from asr_mesh.services.gateway.result_cache import CACHE_REQUESTS
from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc

IDENTITY = ("scripted", "ab" * 32)


# The Redis variant starts a redis-server process: tier `mesh` (the SQLite one stays in `grpc`).
@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.mesh)])
def store_url(request) -> str:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        return server.url
    return ""


@pytest.fixture()
def spool(tmp_path) -> Path:
    return tmp_path / "job-spool"


@pytest.fixture()
def start_gateway(store_url, state_dir, spool):
    handles = []

    def start(stages: ScriptedStages, **overrides):
        values = dict(
            port=0, job_store=store_url, job_spool_dir=spool, job_poll_s=0.05, job_lease_s=1.0
        )
        values.update(overrides)
        handle = create_server(
            GatewaySettings(**values), stages_factory=stages, model_identity=lambda name: IDENTITY
        )
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(0)


def audio(tmp_path: Path, text: str, name: str = "talk.wav") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_submit_answers_before_the_work_and_the_job_runs_to_results(start_gateway, tmp_path, spool):
    stages = ScriptedStages(work_s=0.5)
    gateway = start_gateway(stages)
    with GatewayClient(gateway.address) as client:
        job = client.submit_job(
            audio(tmp_path, "olá mundo"), TranscribeOptions(formats=("json", "srt"))
        )
        assert len(job.job_id) == 32 and job.state in (jpb.JOB_STATE_QUEUED, jpb.JOB_STATE_RUNNING)
        assert job.filename == "talk.wav" and job.upload_size_bytes == len("olá mundo".encode())
        seen = list(client.watch_job(job.job_id))
        assert seen[-1].state == jpb.JOB_STATE_SUCCEEDED
        assert jpb.JOB_STATE_RUNNING in [j.state for j in seen]
        assert any(0 < j.fraction < 1 for j in seen), [j.fraction for j in seen]
        done = client.get_job(job.job_id)
        assert done.fraction == 1 and done.result.segment_count == 1 and not done.result.cache_hit
        assert done.attempts == 1 and done.expire_time.seconds > done.update_time.seconds
        results = client.job_results(job.job_id)
    assert [s.text for s in results.segments] == ["olá mundo"]
    assert [d.content for d in results.documents] == ["json: olá mundo", "srt: olá mundo"]
    assert stages.runs == 1
    assert wait_for(lambda: not any(spool.iterdir()), what="an empty spool") is True


def test_watch_can_be_dropped_and_reopened(start_gateway, tmp_path):
    gateway = start_gateway(ScriptedStages(work_s=1.0))
    with GatewayClient(gateway.address) as client:
        job = client.submit_job(audio(tmp_path, "um dois"), TranscribeOptions())
        stream = client.watch_job(job.job_id)
        first = next(stream)
        stream.close()  # the caller goes away
        assert first.job_id == job.job_id
        assert list(client.watch_job(job.job_id))[-1].state == jpb.JOB_STATE_SUCCEEDED


def test_cache_hit_gives_identical_transcript_without_running_the_chain(start_gateway, tmp_path):
    stages = ScriptedStages()
    gateway = start_gateway(stages)
    options = TranscribeOptions(formats=("json", "txt"))
    path = audio(tmp_path, "a mesma gravação")
    hits = CACHE_REQUESTS.labels("hit")._value.get()
    with GatewayClient(gateway.address) as client:
        first = client.transcribe(path, options)
        second = client.transcribe(path, options)
        assert (first.cache_hit, second.cache_hit, stages.runs) == (False, True, 1)
        assert second.segments == first.segments and second.documents == first.documents
        assert CACHE_REQUESTS.labels("hit")._value.get() == hits + 1

        # Jobs share the cache with Transcribe.
        job = client.submit_job(path, options)
        assert client.wait_job(job.job_id, timeout_s=10).result.cache_hit
        from_job = client.job_results(job.job_id)
        assert from_job.segments == first.segments and from_job.documents == first.documents
        assert from_job.cache_hit and stages.runs == 1

        # no_cache runs the chain; other options or other bytes are other entries.
        assert not client.transcribe(path, dataclasses.replace(options, no_cache=True)).cache_hit
        assert not client.transcribe(
            path, dataclasses.replace(options, formats=("json",))
        ).cache_hit
        assert not client.transcribe(audio(tmp_path, "outra gravação", "b.wav"), options).cache_hit
        assert stages.runs == 4


def test_cancel_mid_run_stops_the_chain_and_empties_the_spool(start_gateway, tmp_path, spool):
    stages = ScriptedStages(work_s=60)
    gateway = start_gateway(stages)
    with GatewayClient(gateway.address) as client:
        job = client.submit_job(audio(tmp_path, "longo demais"), TranscribeOptions())
        assert stages.started.wait(10)
        cancelled = client.cancel_job(job.job_id)
        assert cancelled.state == jpb.JOB_STATE_CANCELLED and cancelled.error.code == "CANCELLED"
        assert stages.cancelled.is_set()
        assert wait_for(lambda: not any(spool.iterdir()), what="an empty spool")
        with pytest.raises(FailedPrecondition, match="cancelled"):
            client.job_results(job.job_id)


def test_queued_jobs_list_newest_first_in_pages_and_cancel_at_once(start_gateway, tmp_path, spool):
    gateway = start_gateway(ScriptedStages(), job_workers=0)  # accepts jobs, runs none
    with GatewayClient(gateway.address) as client:
        ids = [
            client.submit_job(
                audio(tmp_path, f"arquivo {n}", f"f{n}.wav"), TranscribeOptions()
            ).job_id
            for n in range(5)
        ]
        pages, token = [], ""
        while True:
            jobs, token = client.list_jobs(page_size=2, page_token=token)
            pages.append([j.job_id for j in jobs])
            if not token:
                break
        assert pages == [ids[::-1][0:2], ids[::-1][2:4], ids[::-1][4:5]]
        assert client.cancel_job(ids[1]).state == jpb.JOB_STATE_CANCELLED
        assert not (spool / ids[1]).exists() and (spool / ids[0]).exists()
        queued, _ = client.list_jobs(state=jpb.JOB_STATE_QUEUED)
        cancelled, _ = client.list_jobs(state=jpb.JOB_STATE_CANCELLED)
        assert [j.job_id for j in queued] == [i for i in ids[::-1] if i != ids[1]]
        assert [j.job_id for j in cancelled] == [ids[1]]
        with pytest.raises(InvalidInput, match="page_token"):
            client.list_jobs(page_token="nonsense")


def test_failed_job_reports_the_chain_error(start_gateway, tmp_path, spool):
    gateway = start_gateway(ScriptedStages(fail=bad_audio()))
    with GatewayClient(gateway.address) as client:
        job = client.submit_job(audio(tmp_path, "não é áudio"), TranscribeOptions())
        done = client.wait_job(job.job_id, timeout_s=10)
        assert done.state == jpb.JOB_STATE_FAILED
        assert (done.error.code, done.error.reason) == ("INVALID_ARGUMENT", "INVALID_AUDIO")
        assert "no audio stream" in done.error.message
        with pytest.raises(FailedPrecondition, match="no audio stream"):
            client.job_results(job.job_id)
    assert wait_for(lambda: not any(spool.iterdir()), what="an empty spool")


def test_unknown_malformed_and_deleted_jobs(start_gateway, tmp_path):
    gateway = start_gateway(ScriptedStages())
    with GatewayClient(gateway.address) as client:
        with pytest.raises(NotFound):
            client.get_job("0" * 32)
        with pytest.raises(InvalidInput, match="not a job id"):
            client.get_job("../../etc/passwd")
        job = client.submit_job(audio(tmp_path, "apagar"), TranscribeOptions())
        client.wait_job(job.job_id, timeout_s=10)
        client.delete_job(job.job_id)
        with pytest.raises(NotFound):
            client.get_job(job.job_id)
        with pytest.raises(NotFound):
            client.job_results(job.job_id)


def test_results_expire_after_the_retention_time(start_gateway, tmp_path):
    gateway = start_gateway(ScriptedStages(), job_retention_s=0.5)
    with GatewayClient(gateway.address) as client:
        job = client.submit_job(audio(tmp_path, "efêmero"), TranscribeOptions())
        assert client.wait_job(job.job_id, timeout_s=10).state == jpb.JOB_STATE_SUCCEEDED
        assert client.job_results(job.job_id).segments
        time.sleep(0.6)
        with pytest.raises(NotFound):
            client.job_results(job.job_id)
        with pytest.raises(NotFound):
            client.get_job(job.job_id)
        assert client.list_jobs()[0] == []


def test_a_draining_gateway_hands_its_job_to_another(start_gateway, tmp_path):
    slow = ScriptedStages(work_s=60)
    first = start_gateway(slow)
    with GatewayClient(first.address) as client:
        job = client.submit_job(audio(tmp_path, "passa adiante"), TranscribeOptions())
    assert slow.started.wait(10)
    first.stop(0)  # SIGTERM path: the chain is cancelled and the job goes back to the queue
    assert slow.cancelled.is_set()
    other = ScriptedStages()
    second = start_gateway(other)
    with GatewayClient(second.address) as client:
        done = client.wait_job(job.job_id, timeout_s=15)
        assert done.state == jpb.JOB_STATE_SUCCEEDED and other.runs == 1
        assert [s.text for s in client.job_results(job.job_id).segments] == ["passa adiante"]


def test_a_cut_off_upload_leaves_no_job(start_gateway, tmp_path, spool):
    import grpc

    from asr.gateway.v1 import gateway_service_pb2 as gpb
    from asr.gateway.v1 import jobs_pb2_grpc

    gateway = start_gateway(ScriptedStages(), job_workers=0)
    channel = grpc.insecure_channel(gateway.address)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    requests = [
        jpb.SubmitJobRequest(config=gpb.TranscribeConfig(filename="x.wav", upload_size_bytes=10)),
        jpb.SubmitJobRequest(content=b"12345"),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitJob(iter(requests), timeout=10)
    channel.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not any(spool.iterdir())
    with GatewayClient(gateway.address) as client:
        assert client.list_jobs()[0] == []


def test_an_unreachable_job_store_is_unavailable_and_transcribe_still_works(state_dir, tmp_path):
    """No redis-server is started: the URL points at a closed port."""
    from jobs_helpers import free_port

    from asr_mesh.services.common.errors import DependencyUnavailable

    dead = f"redis://127.0.0.1:{free_port()}/0"
    stages = ScriptedStages()
    handle = create_server(
        GatewaySettings(port=0, job_store=dead, job_poll_s=0.05),
        stages_factory=stages,
        model_identity=lambda name: IDENTITY,
    )
    try:
        with GatewayClient(handle.address) as client:
            with pytest.raises(DependencyUnavailable, match="job store is unavailable"):
                client.submit_job(audio(tmp_path, "sem redis"), TranscribeOptions())
            with pytest.raises(DependencyUnavailable, match="job store is unavailable"):
                client.get_job("0" * 32)
            # The result cache lives in the same (dead) Redis: a miss, and the chain runs.
            result = client.transcribe(audio(tmp_path, "sem redis"), TranscribeOptions())
            assert [s.text for s in result.segments] == ["sem redis"] and not result.cache_hit
    finally:
        handle.stop(0)
    assert not any((state_dir / "jobs" / "spool").glob("*"))
