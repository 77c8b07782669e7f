"""Fixtures shared by every test tier."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

# Property tests check correctness, not speed: a loaded CI runner must not fail them on
# Hypothesis's per-example deadline or its "input generation is slow" health check.
settings.register_profile("mesh", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mesh")

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev")).resolve()
MODELS_DIR = REPO / "models"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The development corpus (../shared/corpus-dev, or $ASR_CORPUS_DIR)."""
    if not (CORPUS / "manifest.json").is_file():
        pytest.fail(f"corpus not found at {CORPUS}; set ASR_CORPUS_DIR")
    return CORPUS


@pytest.fixture(scope="session")
def manifest(corpus: Path) -> dict:
    return json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture()
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private mesh state directory (traces, runtime files) for one test."""
    path = tmp_path / "state"
    monkeypatch.setenv("ASR_STATE_DIR", str(path))
    return path


def spy_calls(monkeypatch: pytest.MonkeyPatch, module, name: str) -> list[tuple]:
    """Replace `module.name` with a wrapper that records each call's arguments; returns the record."""
    calls: list[tuple] = []
    real = getattr(module, name)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return calls


def channel_to(port: int) -> grpc.Channel:
    """A channel to an in-process server with the mesh's message size limits."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )


# -- the whole mesh as separate processes (started lazily, once per session) ----------------


@pytest.fixture(scope="session")
def mesh_state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mesh-state")


@pytest.fixture(scope="session")
def mesh(mesh_state: Path):
    from asr_mesh.services.supervisor import LocalMesh

    with LocalMesh(state_dir=mesh_state) as running:
        yield running


@pytest.fixture(scope="session")
def client(mesh):
    from asr_mesh.client.sdk import GatewayClient

    with GatewayClient(mesh.gateway_address) as gateway:
        yield gateway
