"""The local mesh forks its services from one template process (asr_mesh.services.prefork).

Real processes throughout: the template, services forked from it, kill -9 of a service and of
the template. Transcription is started without its model (the tests are about processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mesh_helpers import REPO, wait_until

from asr_mesh.services import prefork
from asr_mesh.services.supervisor import (
    WITHOUT_DIARIZATION,
    LocalMesh,
    Prefork,
    PreforkError,
)

pytestmark = pytest.mark.mesh

LIGHT = {"ASR_TRANSCRIPTION_PRELOAD": "false", "ASR_TRANSCRIPTION_WARM_UP": "false"}
ALWAYS_ON = ("preprocess", "transcription", "merge", "gateway")
HEAVY = ("torch", "ctranslate2", "faster_whisper", "onnxruntime", "fastapi", "pyannote")


def _modules_after(statement: str) -> set[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{statement}; import sys, json; print(json.dumps(list(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env={**os.environ, "PYANNOTE_METRICS_ENABLED": "false"},
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_the_template_preloads_only_what_services_share_and_nothing_heavy():
    everyone = (*ALWAYS_ON, "diarization", "http")
    imported = {
        name: _modules_after(f"import asr_mesh.services.{name}.server") for name in everyone
    }
    for module in prefork.PRELOAD:
        users = [name for name in everyone if module in imported[name]]
        assert len(users) >= 2, f"{module} is preloaded but imported by {users} only"
    preloaded = _modules_after(
        "import importlib, asr_mesh.services.prefork as p; [importlib.import_module(m) for m in "
        "p.PRELOAD]"
    )
    assert not [m for m in HEAVY if m in preloaded]


def test_services_are_forked_with_their_own_environment_and_title(tmp_path):
    with LocalMesh(state_dir=tmp_path, services=WITHOUT_DIARIZATION, env=LIGHT) as mesh:
        table = mesh.describe()
        template = table["supervisor"][0]["prefork_pid"]
        assert _ppid(template) == os.getpid()
        assert "asr_mesh.services.prefork" in _cmdline(template)
        for name in ALWAYS_ON:
            entry = table[name][0]
            assert _ppid(entry["pid"]) == template, name
            assert _cmdline(entry["pid"]).endswith(f"-m asr_mesh.services.{name}")
            # Its own port came through the environment the template applied.
            assert entry["settings"][f"ASR_{name.upper()}_PORT"] == entry["address"].split(":")[1]
            assert _serving(entry["address"]), name
        assert (
            table["gateway"][0]["settings"]["ASR_GATEWAY_TRANSCRIPTION_ADDRESS"]
            == table["transcription"][0]["address"]
        )


def test_a_killed_service_is_reported_and_forked_again(tmp_path):
    with LocalMesh(state_dir=tmp_path, services=WITHOUT_DIARIZATION, env=LIGHT) as mesh:
        mesh.start_supervision(interval_s=0.1)
        template = mesh.describe()["supervisor"][0]["prefork_pid"]
        merge = mesh.replicas_of("merge")[0]
        old = merge.process.pid
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: merge.last_exit == -signal.SIGKILL, 10), merge.last_exit
        assert wait_until(lambda: merge.process.pid != old and merge.ready.is_set(), 30)
        assert _ppid(merge.process.pid) == template
        assert _serving(merge.address)
        assert merge.restarts == 1


def test_a_killed_template_takes_its_services_and_all_come_back(tmp_path):
    with LocalMesh(state_dir=tmp_path, services=WITHOUT_DIARIZATION, env=LIGHT) as mesh:
        mesh.start_supervision(interval_s=0.1)
        template = mesh.describe()["supervisor"][0]["prefork_pid"]
        before = {name: mesh.replicas_of(name)[0].process.pid for name in ALWAYS_ON}
        os.kill(template, signal.SIGKILL)

        def back() -> bool:
            services = {name: mesh.replicas_of(name)[0] for name in ALWAYS_ON}
            return all(s.process.pid != before[n] and s.ready.is_set() for n, s in services.items())

        assert wait_until(back, 60)
        new_template = mesh.describe()["supervisor"][0]["prefork_pid"]
        assert new_template != template
        for name in ALWAYS_ON:
            service = mesh.replicas_of(name)[0]
            assert _ppid(service.process.pid) == new_template
            assert wait_until(lambda s=service: _serving(s.address), 30), name
        for pid in before.values():  # the old services died with their template
            assert wait_until(lambda p=pid: not Path(f"/proc/{p}").exists() or _zombie(p), 30)
        # ... by themselves, on the template's death (PR_SET_PDEATHSIG), not SIGKILLed later.
        assert {name: mesh.replicas_of(name)[0].last_exit for name in ALWAYS_ON} == {
            name: -signal.SIGTERM for name in ALWAYS_ON
        }


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except OSError:
        return True


def test_the_template_forks_only_the_services_it_was_started_for(tmp_path):
    template = Prefork(sys.executable, {**os.environ}, tmp_path / "prefork.log")
    try:
        with pytest.raises(PreforkError, match="not one of the services this template forks"):
            template.spawn("os", {})
        # Still serving after a refusal: a real service forks and exits with its own code
        # (a port that is not a number is refused by its settings: exit code 2, one line).
        child = template.spawn(
            "asr_mesh.services.merge", {**os.environ, "ASR_MERGE_PORT": "not-a-port"}
        )
        assert child.wait(timeout=60) == 2
        assert b"invalid configuration: port" in child.stderr.read()
        assert child.stdout.read() == b""
    finally:
        template.close()
    assert template.process.poll() is not None


def test_without_the_template_each_service_is_its_own_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("ASR_LOCAL_MESH_PREFORK", "false")
    with LocalMesh(state_dir=tmp_path, services=WITHOUT_DIARIZATION, env=LIGHT) as mesh:
        table = mesh.describe()
        assert "prefork_pid" not in table["supervisor"][0]
        for name in ALWAYS_ON:
            entry = table[name][0]
            assert _ppid(entry["pid"]) == os.getpid()
            assert _serving(entry["address"])
