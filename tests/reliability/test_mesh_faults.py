"""Faults on a real local mesh (`asr serve`, real models): kill -9 a service during a request.

The caller gets DEPENDENCY_FAILED naming the dead service within 2 s (the sibling branch is
cancelled, not waited for), the supervisor restarts the service on its address, the mesh keeps
serving, and the next request succeeds. Also a handful of concurrent real requests, queued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
from asr_mesh.services.common.errors import DependencyFailed

pytestmark = [pytest.mark.reliability, pytest.mark.mesh]
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "mesh"))

from mesh_helpers import cli_env, mesh_table, processes_of, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`asr serve` with diarization; yields (gateway address, state dir)."""
    state = tmp_path_factory.mktemp("reliability") / "state"
    serve = subprocess.Popen(
        [sys.executable, "-m", "asr_mesh.client.cli", "serve", "--state-dir", str(state)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(state),
    )
    try:
        line = serve.stdout.readline()
        assert line.startswith("gateway listening on "), line + serve.stderr.read()
        yield line.split()[-1], state
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
    assert wait_until(lambda: not processes_of(state), 30), processes_of(state)


def _shortest(corpus: Path) -> Path:
    return corpus / "asr" / "009.flac"  # 4.9 s, the shortest clip of corpus-dev


def test_concurrent_real_requests_are_queued_and_all_succeed(served, corpus):
    address, _ = served
    clip = _shortest(corpus)
    with GatewayClient(address) as client, ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: client.transcribe(clip, TranscribeOptions(no_cache=True), timeout_s=300),
                range(8),
            )
        )
    assert all(result.segments for result in results)
    assert len({result.trace_id for result in results}) == 8
    # The services' logs reach their files through the supervisor's rotating writer.
    _, state = served
    assert wait_until(lambda: "transcribed" in (state / "logs" / "gateway.log").read_text(), 10)


@pytest.mark.parametrize("victim", ["transcription", "diarization"])
def test_kill_9_during_a_request_is_a_clear_error_then_the_service_is_back(served, corpus, victim):
    address, state = served
    assert wait_until(
        lambda: all(e[0]["state"] == "ready" for e in mesh_table(state).values()), 180
    )
    before = mesh_table(state)[victim][0]
    killed_at: list[float] = []

    def on_event(event) -> None:
        # Both branches are working once transcription reports progress: kill the victim then.
        if (
            event.WhichOneof("payload") == "progress"
            and event.progress.stage == 3
            and not killed_at
        ):
            os.kill(before["pid"], signal.SIGKILL)
            killed_at.append(time.monotonic())

    with (
        GatewayClient(address, max_attempts=1) as client,
        pytest.raises(DependencyFailed) as failed,
    ):
        client.transcribe(
            corpus / "dia" / "conv0.flac",
            TranscribeOptions(diarize=True, no_cache=True),
            on_event=on_event,
            timeout_s=300,
        )
    seconds = time.monotonic() - killed_at[0]
    assert f"the {victim} service failed" in failed.value.message
    assert seconds < 2.0, (
        f"the caller learnt of the dead {victim} service only after {seconds:.1f} s"
    )

    def restarted() -> bool:
        entry = mesh_table(state)[victim][0]
        return entry["pid"] != before["pid"] and entry["state"] == "ready"

    assert wait_until(restarted, 180), mesh_table(state)
    entry = mesh_table(state)[victim][0]
    assert (
        entry["address"] == before["address"] and entry["restarts"] == before.get("restarts", 0) + 1
    )
    with GatewayClient(address) as client:
        result = client.transcribe(
            _shortest(corpus), TranscribeOptions(diarize=True, no_cache=True), timeout_s=300
        )
    assert result.segments and result.speakers
