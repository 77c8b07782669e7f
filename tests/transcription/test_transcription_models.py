"""The model registry under concurrency: leases against unloads, loads that do not block others."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from services.common.errors import InternalError, UnknownModel
from services.transcription.models import ModelRegistry


def _fake_model(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"x")
    return path


class Unloadable:
    """A model that knows whether the registry has unloaded it."""

    def __init__(self, name: str = ""):
        self.name = name
        self.unloaded = False

    def unload(self) -> None:
        self.unloaded = True


@pytest.fixture()
def fast_switching():
    # Thread switches as often as possible, so a gap between look-up and lease shows up.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def test_a_forced_unload_never_drops_a_model_while_it_is_leased(tmp_path, monkeypatch, fast_switching):
    _fake_model(tmp_path, "whisper-base")
    # Unloading calls gc and malloc_trim; the race is about bookkeeping, so keep unloads cheap.
    monkeypatch.setattr("services.transcription.models.release_memory", lambda: None)
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: Unloadable())
    stop = threading.Event()
    leases, broken, errors = [0], [], []

    def lease_loop() -> None:
        try:
            while not stop.is_set():
                with registry.lease("base", "cpu", "int8") as model:
                    leases[0] += 1
                    if model.unloaded:
                        broken.append(model)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def unload_loop() -> None:
        while not stop.is_set():
            registry.unload_idle(force=True)

    threads = [threading.Thread(target=lease_loop) for _ in range(3)] + [threading.Thread(target=unload_loop)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert leases[0] > 1000, "too few leases to have tested anything"
    assert not broken, f"{len(broken)} of {leases[0]} leases got a model that had been unloaded"


def test_a_slow_load_does_not_block_leases_of_another_loaded_model(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    _fake_model(tmp_path, "whisper-small")
    release_small, loading_small = threading.Event(), threading.Event()

    def loader(spec, device, compute_type):
        if spec.name == "whisper-small":
            loading_small.set()
            release_small.wait(10)
        return Unloadable(spec.name)

    registry = ModelRegistry(tmp_path, "base", loader=loader)
    base = registry.get("base", "cpu", "int8")
    slow = threading.Thread(target=registry.get, args=("small", "cpu", "int8"))
    slow.start()
    try:
        assert loading_small.wait(5)
        leased = threading.Event()

        def lease_base() -> None:
            with registry.lease("base", "cpu", "int8") as model:
                assert model is base
                leased.set()

        other = threading.Thread(target=lease_base)
        other.start()
        assert leased.wait(2), "leasing a loaded model waited for another model's load"
        assert registry.is_loaded("base") and not registry.is_loaded("small")  # no wait either
        other.join(5)
    finally:
        release_small.set()
        slow.join(10)
    assert registry.is_loaded("small")


def test_concurrent_first_requests_load_one_copy(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    loads, started, release = [], threading.Event(), threading.Event()

    def loader(spec, device, compute_type):
        loads.append(spec.name)
        started.set()
        release.wait(10)
        return Unloadable(spec.name)

    registry = ModelRegistry(tmp_path, "base", loader=loader)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(registry.get("base", "cpu", "int8")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    assert started.wait(5)
    time.sleep(0.2)  # the others are waiting for that load now
    release.set()
    for thread in threads:
        thread.join(10)
    assert loads == ["whisper-base"]
    assert len(got) == 4 and all(model is got[0] for model in got)


def test_a_failed_load_reaches_every_waiter_and_the_next_request_retries(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    attempts = []

    def loader(spec, device, compute_type):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("model.bin is truncated")
        return Unloadable()

    registry = ModelRegistry(tmp_path, "base", loader=loader)
    with pytest.raises(OSError, match="truncated"):
        registry.get("base", "cpu", "int8")
    assert not registry.is_loaded("base")
    assert isinstance(registry.get("base", "cpu", "int8"), Unloadable)
    assert len(attempts) == 2


def test_a_missing_default_model_is_a_server_fault_not_the_callers(tmp_path):
    _fake_model(tmp_path, "whisper-small")
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: Unloadable())
    with pytest.raises(InternalError, match="default model 'base' is not in its models directory") as err:
        registry.resolve("")
    assert not isinstance(err.value, UnknownModel)
    assert "available: small, whisper-small" in err.value.message
    with pytest.raises(UnknownModel):  # a model the caller named is still the caller's mistake
        registry.resolve("large-v9")
