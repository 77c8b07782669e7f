"""`asr serve --transcription-replicas N` and the background mesh's ASR_LOCAL_TRANSCRIPTION_REPLICAS
(real processes). Replicas are started with preload and warm-up off where nothing is transcribed:
the test is about processes, ports and supervision, not the model."""
# The fixture is imported from mesh_helpers, so test parameters "redefine" it.
# ruff: noqa: F811

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mesh_helpers import (  # noqa: F401 (fixture)
    ASR,
    REPO,
    cli_env,
    mesh_dir,
    mesh_table,
    processes_of,
    run_asr,
    wait_until,
)

from asr_mesh.services.supervisor import use_local_mesh

pytestmark = pytest.mark.mesh

LIGHT = {"ASR_TRANSCRIPTION_PRELOAD": "false", "ASR_TRANSCRIPTION_WARM_UP": "false"}


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _transcription_pids(state: Path) -> set[int]:
    return {
        pid for pid, cmd in processes_of(state).items() if "asr_mesh.services.transcription" in cmd
    }


def test_serve_runs_three_supervised_replicas_and_the_gateway_gets_them_all(tmp_path):
    state = tmp_path / "state"
    serve = subprocess.Popen(
        [
            *ASR,
            "serve",
            "--no-diarization",
            "--transcription-replicas",
            "3",
            "--state-dir",
            str(state),
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(state, **LIGHT),
    )
    try:
        line = serve.stdout.readline()
        assert line.startswith("gateway listening on "), line + serve.stderr.read()
        table = mesh_table(state)
        replicas = table["transcription"]
        addresses = [entry["address"] for entry in replicas]
        pids = [entry["pid"] for entry in replicas]
        assert len(replicas) == 3 and [entry["replica"] for entry in replicas] == [0, 1, 2]
        assert len({a.rsplit(":", 1)[1] for a in addresses}) == 3 and len(set(pids)) == 3
        assert all(entry["state"] == "ready" for entry in replicas)
        assert _transcription_pids(state) == set(pids)  # live, and no others
        assert all(_serving(address) for address in addresses)
        assert [len(table[name]) for name in ("preprocess", "merge", "gateway")] == [1, 1, 1]

        gateway_env = table["gateway"][0]["settings"]
        assert gateway_env["ASR_GATEWAY_TRANSCRIPTION_ADDRESS"] == ",".join(addresses)
        assert "," not in gateway_env["ASR_GATEWAY_PREPROCESS_ADDRESS"]
        # Each replica binds its own port (and, unset by us, shares the cores instead of taking all).
        for entry in replicas:
            env = entry["settings"]
            assert f"127.0.0.1:{env['ASR_TRANSCRIPTION_PORT']}" == entry["address"]
            assert int(env["ASR_TRANSCRIPTION_CPU_THREADS"]) == max((os.cpu_count() or 1) // 3, 1)

        # kill -9 one replica: only it is restarted, on its address; the other two are untouched.
        os.kill(pids[1], signal.SIGKILL)

        def restarted():
            entry = mesh_table(state)["transcription"][1]
            return entry["pid"] != pids[1] and entry["state"] == "ready"

        assert wait_until(restarted, 120), mesh_table(state)
        after = mesh_table(state)["transcription"]
        assert [e["address"] for e in after] == addresses
        assert [e["pid"] for e in after][0::2] == pids[0::2] and [e["restarts"] for e in after] == [
            0,
            1,
            0,
        ]
        assert _transcription_pids(state) == {e["pid"] for e in after}
        assert _serving(addresses[1])
        assert serve.poll() is None

        stop = run_asr(state, "serve", "--stop", "--state-dir", str(state))
        assert stop.returncode == 0 and "stopped the local mesh" in stop.stderr, stop.stderr
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
    assert wait_until(lambda: not processes_of(state), 30), processes_of(state)
    assert not (state / "mesh.json").exists()


def test_the_background_mesh_takes_its_count_from_the_environment(mesh_dir, monkeypatch):
    for name, value in {
        **LIGHT,
        "ASR_LOCAL_MESH_OWNER_PID": str(os.getpid()),
        "ASR_LOCAL_TRANSCRIPTION_REPLICAS": "2",
    }.items():
        monkeypatch.setenv(name, value)
    with use_local_mesh(mesh_dir) as address:
        replicas = mesh_table(mesh_dir)["transcription"]
    assert len(replicas) == 2 and len({e["address"] for e in replicas}) == 2
    assert _transcription_pids(mesh_dir) == {e["pid"] for e in replicas}
    assert mesh_table(mesh_dir)["gateway"][0]["settings"][
        "ASR_GATEWAY_TRANSCRIPTION_ADDRESS"
    ] == ",".join(e["address"] for e in replicas)

    # Another count asked for later: the running mesh is reused, and the caller is told.
    told: list[str] = []
    with use_local_mesh(mesh_dir, transcription_replicas=3, on_mismatch=told.append) as again:
        assert again == address
    assert told == [
        "using the running local mesh with 2 transcription replicas, not the 3 asked for "
        "(`asr serve --stop`, then call again, to change it)"
    ]
    assert [e["pid"] for e in mesh_table(mesh_dir)["transcription"]] == [e["pid"] for e in replicas]
    # Nothing asked for (no argument, no environment): nothing to say.
    monkeypatch.delenv("ASR_LOCAL_TRANSCRIPTION_REPLICAS")
    told.clear()
    with use_local_mesh(mesh_dir, on_mismatch=told.append):
        pass
    assert told == []


def test_a_cli_call_asking_for_replicas_reuses_the_running_mesh_and_says_so(
    mesh_dir, corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("ASR_LOCAL_MESH_OWNER_PID", str(os.getpid()))
    monkeypatch.delenv("ASR_LOCAL_TRANSCRIPTION_REPLICAS", raising=False)
    with use_local_mesh(mesh_dir):  # one replica (the default)
        before = mesh_table(mesh_dir)
    proc = run_asr(
        mesh_dir,
        "transcribe",
        str(corpus / "asr" / "000.flac"),
        "-o",
        str(tmp_path),
        "--quiet",
        ASR_LOCAL_TRANSCRIPTION_REPLICAS="2",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "asr: using the running local mesh with 1 transcription replica, "
        "not the 2 asked for (`asr serve --stop`, then call again, to change it)"
    )
    assert (tmp_path / "000.json").is_file() and "Traceback" not in proc.stderr
    assert mesh_table(mesh_dir)["transcription"][0]["pid"] == before["transcription"][0]["pid"]
    assert len(mesh_table(mesh_dir)["transcription"]) == 1


@pytest.mark.parametrize("value", ["0", "many", "65"])
def test_a_bad_replica_count_is_one_line(value, tmp_path):
    state = tmp_path / "state"
    proc = run_asr(
        state, "serve", "--transcription-replicas", value, "--state-dir", str(state), timeout=60
    )
    assert (
        proc.returncode == 2
        and "--transcription-replicas" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    proc = run_asr(
        state,
        "serve",
        "--state-dir",
        str(state),
        timeout=60,
        ASR_LOCAL_TRANSCRIPTION_REPLICAS=value,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        and "ASR_LOCAL_TRANSCRIPTION_REPLICAS" in proc.stderr
    )
    assert not processes_of(state)
