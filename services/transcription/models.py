"""The model registry: model names → local CTranslate2 directories, and loaded instances.

No weights are ever downloaded. A model is a directory holding `model.bin` beside
`config.json` and the tokenizer, either directly under the models directory
(`models/whisper-base/`) or in Hugging Face cache layout
(`models/models--Systran--faster-whisper-large-v3/snapshots/<rev>/`).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry import trace

from services.common.errors import UnknownModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A model the registry can load."""

    name: str
    path: Path


def discover_models(models_dir: Path) -> dict[str, ModelSpec]:
    """Find every model directory under `models_dir`, keyed by name (and short aliases)."""
    found: dict[str, ModelSpec] = {}
    if not models_dir.is_dir():
        return found
    for entry in sorted(models_dir.iterdir()):
        if (entry / "model.bin").is_file():
            found[entry.name] = ModelSpec(entry.name, entry)
        elif entry.name.startswith("models--") and (entry / "snapshots").is_dir():
            snapshots = sorted(p for p in (entry / "snapshots").iterdir() if (p / "model.bin").is_file())
            if snapshots:
                name = entry.name.split("--")[-1]
                found[name] = ModelSpec(name, snapshots[-1])
    # Short aliases: "base" for "whisper-base", "large-v3" for "faster-whisper-large-v3".
    for name, spec in list(found.items()):
        for prefix in ("faster-whisper-", "whisper-"):
            if name.startswith(prefix):
                found.setdefault(name[len(prefix):], spec)
    return found


@dataclass
class _Loaded:
    model: object
    name: str
    device: str
    compute_type: str
    in_use: int = 0
    last_used: float = field(default=0.0)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


class ModelRegistry:
    """Resolves model names and keeps one loaded instance per (model, device, compute type).

    Loaded models are shared by every request. With `idle_unload_s` > 0 a model nobody has used
    for that long is dropped by `unload_idle` (called by a reaper thread, see `start_reaper`) and
    its memory returned to the OS; the next request loads it again. `on_change(name, device,
    compute_type, loaded)` reports loads and unloads (the server feeds the MODEL_LOADED gauge).
    """

    def __init__(self, models_dir: Path, default_model: str, loader, *, idle_unload_s: float = 0.0,
                 on_change: Callable[[str, str, str, bool], None] | None = None,
                 on_lookup: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._models_dir = models_dir
        self._specs = discover_models(models_dir)
        self.default_model = default_model
        self._loader = loader
        self.idle_unload_s = idle_unload_s
        self._on_change = on_change or (lambda *a: None)
        self._on_lookup = on_lookup or (lambda hit: None)
        self._clock = clock
        self._loaded: dict[tuple[str, str, str], _Loaded] = {}
        self._lock = threading.Lock()
        self._reaper_stop = threading.Event()

    def names(self) -> list[str]:
        return sorted(self._specs)

    def resolve(self, name: str) -> ModelSpec:
        name = name or self.default_model
        spec = self._specs.get(name)
        if spec is None:
            available = ", ".join(self.names()) or f"none (models directory {self._models_dir})"
            raise UnknownModel(
                f"unknown model {name!r}; available: {available}", field="config.model"
            )
        return spec

    def _entry(self, name: str, device: str, compute_type: str) -> _Loaded:
        spec = self.resolve(name)
        key = (spec.path.as_posix(), device, compute_type)
        # Held while loading: two first requests must not load two copies.
        with self._lock:
            entry = self._loaded.get(key)
            self._on_lookup(entry is not None)
            trace.get_current_span().set_attribute("asr.model.cache_hit", entry is not None)
            if entry is None:
                log.info("loading model %s from %s on %s/%s", spec.name, spec.path, device, compute_type)
                entry = _Loaded(self._loader(spec, device, compute_type), spec.name, device, compute_type)
                self._loaded[key] = entry
                self._on_change(spec.name, device, compute_type, True)
            entry.last_used = self._clock()
            return entry

    def get(self, name: str, device: str, compute_type: str):
        """The shared loaded model, loading it on first use."""
        return self._entry(name, device, compute_type).model

    @contextmanager
    def lease(self, name: str, device: str, compute_type: str) -> Iterator[object]:
        """The shared model, protected from idle unloading until the block ends."""
        entry = self._entry(name, device, compute_type)
        with self._lock:
            entry.in_use += 1
        try:
            yield entry.model
        finally:
            with self._lock:
                entry.in_use -= 1
                entry.last_used = self._clock()

    def is_loaded(self, name: str) -> bool:
        spec = self._specs.get(name)
        return spec is not None and any(k[0] == spec.path.as_posix() for k in self._loaded)

    def loaded_count(self) -> int:
        return len(self._loaded)

    def unload_idle(self, force: bool = False) -> list[str]:
        """Drop models unused for `idle_unload_s` (all unused ones with `force`); their names."""
        if not force and self.idle_unload_s <= 0:
            return []
        now = self._clock()
        dropped: list[_Loaded] = []
        with self._lock:
            for key, entry in list(self._loaded.items()):
                if entry.in_use == 0 and (force or now - entry.last_used >= self.idle_unload_s):
                    dropped.append(self._loaded.pop(key))
        for entry in dropped:
            log.info("unloading idle model %s (%s/%s)", entry.name, entry.device, entry.compute_type)
            unload = getattr(entry.model, "unload", None)
            if callable(unload):
                unload()
            self._on_change(entry.name, entry.device, entry.compute_type, False)
        names = [e.name for e in dropped]
        dropped.clear()
        if names:
            release_memory()
        return names

    def start_reaper(self, interval_s: float | None = None) -> threading.Thread | None:
        """Check for idle models every `interval_s` in a daemon thread (no-op without idle_unload_s)."""
        if self.idle_unload_s <= 0:
            return None
        interval = interval_s or max(0.5, min(30.0, self.idle_unload_s / 4))

        def run() -> None:
            while not self._reaper_stop.wait(interval):
                try:
                    self.unload_idle()
                except Exception:  # the reaper must not die; the next round retries
                    log.exception("idle unload failed")

        thread = threading.Thread(target=run, name="model-reaper", daemon=True)
        thread.start()
        return thread

    def stop_reaper(self) -> None:
        self._reaper_stop.set()
