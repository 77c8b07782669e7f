"""The model registry under concurrency: leases against unloads, loads that do not block others."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from asr_mesh.services.common.errors import InternalError, UnknownModel
from asr_mesh.services.transcription import models as models_module
from asr_mesh.services.transcription.models import ModelRegistry


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


def test_a_forced_unload_never_drops_a_model_while_it_is_leased(
    tmp_path, monkeypatch, fast_switching
):
    _fake_model(tmp_path, "whisper-base")
    # Unloading calls gc and malloc_trim; the race is about bookkeeping, so keep unloads cheap.
    monkeypatch.setattr("asr_mesh.services.transcription.models.release_memory", lambda: None)
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: Unloadable())
    stop = threading.Event()
    count_lock = threading.Lock()
    leases, broken, errors = [0], [], []
    wanted = 3000

    def lease_loop() -> None:
        try:
            while not stop.is_set():
                with registry.lease("base", "cpu", "int8") as model:
                    if model.unloaded:
                        broken.append(model)
                with count_lock:
                    leases[0] += 1
                    if leases[0] >= wanted:
                        stop.set()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            stop.set()

    def unload_loop() -> None:
        while not stop.is_set():
            registry.unload_idle(force=True)

    threads = [threading.Thread(target=lease_loop) for _ in range(3)] + [
        threading.Thread(target=unload_loop)
    ]
    for thread in threads:
        thread.start()
    stop.wait(10)  # until enough leases ran against the unloader, at most ~10 s
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert leases[0] >= wanted, f"only {leases[0]} leases in 10 s: too few to have tested anything"
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


@pytest.fixture()
def waiting_for_load(monkeypatch):
    """Counts requests that found a load of their model in progress and began waiting for it."""
    arrived, lock = [0], threading.Condition()
    original = models_module._PendingLoad.wait

    def wait(self) -> None:
        with lock:
            arrived[0] += 1
            lock.notify_all()
        original(self)

    monkeypatch.setattr(models_module._PendingLoad, "wait", wait)

    def until(count: int, timeout: float = 5.0) -> bool:
        with lock:
            return lock.wait_for(lambda: arrived[0] >= count, timeout)

    return until


def test_concurrent_first_requests_load_one_copy(tmp_path, waiting_for_load):
    _fake_model(tmp_path, "whisper-base")
    loads, started, release = [], threading.Event(), threading.Event()

    def loader(spec, device, compute_type):
        loads.append(spec.name)
        started.set()
        release.wait(10)
        return Unloadable(spec.name)

    registry = ModelRegistry(tmp_path, "base", loader=loader)
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(registry.get("base", "cpu", "int8")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    try:
        assert started.wait(5)
        # The other three provably arrived while the load was pending and wait for it.
        assert waiting_for_load(3), "the other requests never waited for the pending load"
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert loads == ["whisper-base"]
    assert len(got) == 4 and all(model is got[0] for model in got)


def test_a_failed_load_reaches_every_waiter_and_the_next_request_retries(
    tmp_path, waiting_for_load
):
    _fake_model(tmp_path, "whisper-base")
    attempts, started, fail = [], threading.Event(), threading.Event()

    def loader(spec, device, compute_type):
        attempts.append(1)
        if len(attempts) == 1:
            started.set()
            fail.wait(10)  # fails only once the other requests wait for this load
            raise OSError("model.bin is truncated")
        return Unloadable()

    registry = ModelRegistry(tmp_path, "base", loader=loader)
    outcomes: list[object] = []
    outcomes_lock = threading.Lock()

    def first_request() -> None:
        try:
            result: object = registry.get("base", "cpu", "int8")
        except Exception as exc:
            result = exc
        with outcomes_lock:
            outcomes.append(result)

    owner = threading.Thread(target=first_request)
    owner.start()
    waiters = [threading.Thread(target=first_request) for _ in range(3)]
    try:
        assert started.wait(5)
        for thread in waiters:
            thread.start()
        assert waiting_for_load(3), "the other requests never waited for the pending load"
    finally:
        fail.set()
        for thread in [owner, *waiters]:
            thread.join(10)
    assert len(outcomes) == 4
    assert all(isinstance(o, OSError) and "truncated" in str(o) for o in outcomes), outcomes
    assert len(attempts) == 1, "a waiter loaded the model again instead of getting the failure"
    assert not registry.is_loaded("base")
    assert isinstance(registry.get("base", "cpu", "int8"), Unloadable)
    assert len(attempts) == 2


def test_a_missing_default_model_is_a_server_fault_not_the_callers(tmp_path):
    _fake_model(tmp_path, "whisper-small")
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: Unloadable())
    with pytest.raises(
        InternalError, match="default model 'base' is not in its models directory"
    ) as err:
        registry.resolve("")
    assert not isinstance(err.value, UnknownModel)
    assert "available: small, whisper-small" in err.value.message
    with pytest.raises(UnknownModel):  # a model the caller named is still the caller's mistake
        registry.resolve("large-v9")


def test_an_instance_with_its_own_thread_count_is_loaded_apart_and_reported_as_one_more(
    tmp_path, monkeypatch
):
    """Streaming's beam-search instance (`threads` > 0) is a second copy of the model, loaded
    with those threads; the shared one stays as it was, and unloads report each copy."""
    _fake_model(tmp_path, "whisper-base")
    monkeypatch.setattr("asr_mesh.services.transcription.models.release_memory", lambda: None)
    calls, changes = [], []

    def loader(spec, device, compute_type, *threads):
        calls.append(threads)
        return Unloadable(spec.name)

    registry = ModelRegistry(
        tmp_path, "base", loader=loader, on_change=lambda *event: changes.append(event)
    )
    shared = registry.get("base", "cpu", "int8")
    with registry.lease("base", "cpu", "int8", 1) as beams:
        assert beams is not shared and registry.get("base", "cpu", "int8", 1) is beams
        assert registry.get("base", "cpu", "int8") is shared
    assert calls == [(), (1,)]  # the shared instance is loaded as before, without threads
    assert registry.loaded_count() == 2
    assert registry.unload_idle(force=True) == ["whisper-base", "whisper-base"]
    assert shared.unloaded and beams.unloaded
    loaded = [event[-1] for event in changes]
    assert loaded == [True, True, False, False]
