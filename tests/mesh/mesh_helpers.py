"""Helpers (and the `mesh_dir` fixture) for tests that run the `asr` CLI and its background local mesh as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ASR = [sys.executable, "-m", "asr_mesh.client.cli"]


def cli_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a CLI call: a private state dir, and a background mesh that dies with us."""
    return {
        **os.environ,
        "ASR_STATE_DIR": str(state_dir),
        "ASR_LOCAL_MESH_OWNER_PID": str(os.getpid()),
        "PYANNOTE_METRICS_ENABLED": "false",
        **extra,
    }


def run_asr(
    state_dir: Path, *args: str, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ASR, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        env=cli_env(state_dir, **env),
    )


def mesh_table(state_dir: Path) -> dict:
    return json.loads((state_dir / "mesh.json").read_text(encoding="utf-8"))


def mesh_pids(state_dir: Path) -> dict[str, int]:
    return {name: entries[0]["pid"] for name, entries in mesh_table(state_dir).items()}


def processes_of(state_dir: Path) -> dict[int, str]:
    """pid → command line of every live process started for `state_dir` (its environment says so)."""
    found = {}
    needle = f"ASR_STATE_DIR={state_dir}\0".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if needle in environ + b"\0" and state != "Z" and "python" in cmdline:
            found[int(entry)] = cmdline
    return found


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture()
def mesh_dir(tmp_path: Path):
    """A state dir for background meshes; whatever runs there is stopped (and checked) at the end."""
    from asr_mesh.services.supervisor import stop_local_mesh

    state = tmp_path / "state"
    yield state
    stop_local_mesh(state)
    assert wait_until(lambda: not processes_of(state), 30), processes_of(state)
