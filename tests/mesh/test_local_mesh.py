"""The local mesh the CLI shares between calls, and `asr serve`'s supervision (real processes)."""
# The fixture is imported from mesh_helpers, so test parameters "redefine" it.
# ruff: noqa: F811

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from mesh_helpers import (  # noqa: F401 (fixture)
    ASR,
    REPO,
    cli_env,
    mesh_dir,
    mesh_pids,
    mesh_table,
    processes_of,
    run_asr,
    wait_until,
)

from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
from asr_mesh.services.common.errors import MeshError

pytestmark = pytest.mark.mesh


def _transcribe(state, corpus, out, *extra, **env):
    proc = run_asr(
        state,
        "transcribe",
        str(corpus / "asr" / "000.flac"),
        "-o",
        str(out),
        "--quiet",
        *extra,
        **env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _diarization_processes(state) -> list[int]:
    return [
        pid for pid, cmd in processes_of(state).items() if "asr_mesh.services.diarization" in cmd
    ]


def test_calls_reuse_one_mesh_that_starts_diarization_only_when_asked(mesh_dir, corpus, tmp_path):
    _transcribe(mesh_dir, corpus, tmp_path / "a")
    first = mesh_pids(mesh_dir)
    assert set(first) == {"supervisor", "preprocess", "transcription", "merge", "gateway"}
    assert _diarization_processes(mesh_dir) == []
    assert (tmp_path / "a" / "000.json").is_file()

    _transcribe(mesh_dir, corpus, tmp_path / "b")
    assert mesh_pids(mesh_dir) == first  # the same processes served the second call

    # The gateway knows diarization is absent and says so instead of failing later.
    address = mesh_table(mesh_dir)["gateway"][0]["address"]
    with GatewayClient(address) as client, pytest.raises(MeshError) as refused:
        client.transcribe(
            corpus / "asr" / "000.flac", TranscribeOptions(diarize=True, num_speakers=2)
        )
    assert (
        "no diarization service" in refused.value.message
        and "num_speakers" in refused.value.message
    )

    # Asking for speakers adds diarization to the running mesh; nothing else is restarted.
    proc = _transcribe(mesh_dir, corpus, tmp_path / "c", "--diarize", "--format", "json,rttm")
    assert (tmp_path / "c" / "000.rttm").read_text().startswith("SPEAKER")
    now = mesh_pids(mesh_dir)
    assert {k: v for k, v in now.items() if k != "diarization"} == first
    assert _diarization_processes(mesh_dir) == [now["diarization"]]
    assert proc.returncode == 0


def test_the_mesh_stops_by_itself_when_idle(mesh_dir, corpus, tmp_path):
    _transcribe(mesh_dir, corpus, tmp_path / "out", ASR_LOCAL_MESH_IDLE_S="2")
    pids = mesh_pids(mesh_dir)
    assert wait_until(lambda: not (mesh_dir / "mesh.json").exists(), 60)
    assert wait_until(lambda: not processes_of(mesh_dir), 30), processes_of(mesh_dir)
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in pids.values())


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] == "Z"
    except OSError:
        return True


def test_two_calls_at_once_share_one_mesh(mesh_dir, corpus, tmp_path):
    calls = [
        subprocess.Popen(
            [
                *ASR,
                "transcribe",
                str(corpus / "asr" / f"00{i}.flac"),
                "-o",
                str(tmp_path / f"o{i}"),
                "--quiet",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(mesh_dir),
        )
        for i in (0, 1)
    ]
    for call in calls:
        _, err = call.communicate(timeout=600)
        assert call.returncode == 0, err
    assert (tmp_path / "o0" / "000.json").is_file() and (tmp_path / "o1" / "001.json").is_file()
    commands = list(processes_of(mesh_dir).values())
    assert sum("asr_mesh.services.supervisor" in c for c in commands) == 1
    assert sum("asr_mesh.services.transcription" in c for c in commands) == 1
    assert sum("asr_mesh.services.gateway" in c for c in commands) == 1
    started = (mesh_dir / "logs" / "supervisor.log").read_text().count("gateway listening on")
    assert started == 1


def test_a_killed_mesh_is_replaced_on_the_next_call(mesh_dir, corpus, tmp_path):
    _transcribe(mesh_dir, corpus, tmp_path / "a")
    before = mesh_pids(mesh_dir)
    os.kill(before["supervisor"], signal.SIGKILL)  # its services follow it (PR_SET_PDEATHSIG)
    assert wait_until(lambda: not processes_of(mesh_dir), 30)
    _transcribe(mesh_dir, corpus, tmp_path / "b")
    after = mesh_pids(mesh_dir)
    assert after["supervisor"] != before["supervisor"] and after["gateway"] != before["gateway"]
    assert (tmp_path / "b" / "000.json").is_file()


def test_serve_restarts_a_killed_service_on_its_address(corpus, tmp_path):
    state = tmp_path / "state"
    serve = subprocess.Popen(
        [*ASR, "serve", "--no-diarization", "--state-dir", str(state)],
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
        address = line.split()[-1]
        for victim in ("transcription", "gateway"):
            before = mesh_table(state)[victim][0]
            os.kill(before["pid"], signal.SIGKILL)

            def restarted(victim=victim, before=before):
                entry = mesh_table(state)[victim][0]
                return entry["pid"] != before["pid"] and entry["state"] == "ready"

            assert wait_until(restarted, 180), mesh_table(state)
            entry = mesh_table(state)[victim][0]
            assert entry["address"] == before["address"] and entry["restarts"] == 1
            with GatewayClient(address) as client:
                result = client.transcribe(corpus / "asr" / "000.flac", TranscribeOptions())
            assert result.segments and serve.poll() is None
        # A request for speakers through --server: one sentence, not a hang or a traceback.
        proc = subprocess.run(
            [
                *ASR,
                "transcribe",
                str(corpus / "asr" / "000.flac"),
                "--diarize",
                "--server",
                address,
                "--quiet",
                "-o",
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        assert (
            proc.returncode == 1
            and "no diarization service" in proc.stderr
            and "Traceback" not in proc.stderr
        )
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
    assert wait_until(lambda: not processes_of(state), 30), processes_of(state)
    assert not (state / "mesh.json").exists()


def test_no_reuse_runs_a_private_mesh_and_leaves_nothing(mesh_dir, corpus, tmp_path):
    _transcribe(mesh_dir, corpus, tmp_path / "out", "--no-reuse")
    assert (tmp_path / "out" / "000.json").is_file()
    assert not (mesh_dir / "mesh.json").exists()
    assert list((mesh_dir / "runtime").iterdir()) == []  # its own process table is gone too
    assert processes_of(mesh_dir) == {}
