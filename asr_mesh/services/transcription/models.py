"""The model registry: model names → local CTranslate2 directories, and loaded instances.

No weights are ever downloaded. A model is a directory holding `model.bin` beside
`config.json` and the tokenizer, either directly under the models directory
(`models/whisper-base/`) or in Hugging Face cache layout
(`models/models--Systran--faster-whisper-large-v3/snapshots/<rev>/`).
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace

from asr_mesh.services.common.domain_errors import InternalError, UnknownModel

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
            snapshots = sorted(
                p for p in (entry / "snapshots").iterdir() if (p / "model.bin").is_file()
            )
            if snapshots:
                name = entry.name.split("--")[-1]
                found[name] = ModelSpec(name, snapshots[-1])
    # Short aliases: "base" for "whisper-base", "large-v3" for "faster-whisper-large-v3".
    for name, spec in list(found.items()):
        for prefix in ("faster-whisper-", "whisper-"):
            if name.startswith(prefix):
                found.setdefault(name[len(prefix) :], spec)
    return found


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 (hex) of `model_dir/model.bin`, computed once per file version (size, mtime)."""
    weights = Path(model_dir) / "model.bin"
    stat = weights.stat()
    key = (str(weights), stat.st_size, stat.st_mtime_ns)
    with _DIGEST_LOCK:  # one pass over a multi-GB file even when several callers ask at once
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with open(weights, "rb") as source:
                while block := source.read(8 << 20):
                    digest.update(block)
            _DIGESTS[key] = digest.hexdigest()
        return _DIGESTS[key]


@dataclass
class _Loaded:
    model: object
    name: str
    device: str
    compute_type: str
    in_use: int = 0
    last_used: float = field(default=0.0)


class _PendingLoad:
    """A load in progress that other first requests for the same model wait for."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None

    def finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()

    def wait(self) -> None:
        """Block until the load ends; re-raise its failure (one error, not one load per waiter)."""
        self._done.wait()
        if self._error is not None:
            raise self._error


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


class ModelRegistry:
    """Resolves model names and keeps one loaded instance per (model, device, compute type,
    threads).

    Loaded models are shared by every request. With `idle_unload_s` > 0 a model nobody has used
    for that long is dropped by `unload_idle` (called by a reaper thread, see `start_reaper`) and
    its memory returned to the OS; the next request loads it again. `on_change(name, device,
    compute_type, loaded)` reports loads and unloads (the server feeds the MODEL_LOADED gauge);
    it and `on_lookup(hit)` run under the registry's lock, so they must be quick and must not
    call the registry.

    `threads` 0 is the instance every request shares, loaded by `loader(spec, device,
    compute_type)`; above 0 a separate instance `loader(spec, device, compute_type, threads)`
    loads with that many CPU threads (streaming's beam-search decodes, see
    `TranscriptionSettings.stream_beam_threads`).
    """

    def __init__(
        self,
        models_dir: Path,
        default_model: str,
        loader,
        *,
        idle_unload_s: float = 0.0,
        on_change: Callable[[str, str, str, bool], None] | None = None,
        on_lookup: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._models_dir = models_dir
        self._specs = discover_models(models_dir)
        self.default_model = default_model
        self._loader = loader
        self.idle_unload_s = idle_unload_s
        self._on_change = on_change or (lambda *a: None)
        self._on_lookup = on_lookup or (lambda hit: None)
        self._clock = clock
        self._loaded: dict[tuple[str, str, str, int], _Loaded] = {}
        self._loading: dict[tuple[str, str, str, int], _PendingLoad] = {}
        # Guards `_loaded`, `_loading` and every entry's `in_use`; never held while loading.
        self._lock = threading.Lock()
        self._reaper_stop = threading.Event()

    def names(self) -> list[str]:
        return sorted(self._specs)

    def resolve(self, name: str) -> ModelSpec:
        """The model called `name` ("" = the default); `UnknownModel` lists what exists."""
        spec = self._specs.get(name or self.default_model)
        if spec is None:
            available = ", ".join(self.names()) or f"none (models directory {self._models_dir})"
            if not name:
                # The caller asked for nothing in particular: the server is misconfigured.
                raise InternalError(
                    f"this server's default model {self.default_model!r} is not in its models "
                    f"directory {self._models_dir}; available: {available}"
                )
            raise UnknownModel(
                f"unknown model {name!r}; available: {available}", field="config.model"
            )
        return spec

    def _acquire(self, name: str, device: str, compute_type: str, threads: int = 0) -> _Loaded:
        """The loaded entry, loading it on first use, with `in_use` already counted.

        `in_use` goes up in the same critical section that finds the entry, so `unload_idle`
        can never drop a model between the look-up and its use. Loading runs outside the
        registry lock, behind a per-key pending load: leases of other (loaded) models go on
        meanwhile, and concurrent first requests for the same model wait for one load.
        """
        spec = self.resolve(name)
        key = (spec.path.as_posix(), device, compute_type, threads)
        first_look = True
        while True:
            with self._lock:
                entry = self._loaded.get(key)
                if first_look:
                    self._on_lookup(entry is not None)
                    trace.get_current_span().set_attribute("asr.model.cache_hit", entry is not None)
                    first_look = False
                if entry is not None:
                    entry.in_use += 1
                    entry.last_used = self._clock()
                    return entry
                pending = self._loading.get(key)
                owner = pending is None
                if pending is None:
                    pending = self._loading[key] = _PendingLoad()
            if not owner:
                # Another request is loading this model: wait for it, then look again (it
                # may have failed, or been unloaded already in the meantime).
                pending.wait()
                continue
            try:
                log.info(
                    "loading model %s from %s on %s/%s", spec.name, spec.path, device, compute_type
                )
                model = (
                    self._loader(spec, device, compute_type, threads)
                    if threads
                    else self._loader(spec, device, compute_type)
                )
            except BaseException as exc:
                with self._lock:
                    del self._loading[key]
                pending.finish(exc)
                raise
            entry = _Loaded(
                model, spec.name, device, compute_type, in_use=1, last_used=self._clock()
            )
            with self._lock:
                self._loaded[key] = entry
                del self._loading[key]
                # Reported under the lock, as unloads are: the gauge sees them in order.
                self._on_change(spec.name, device, compute_type, True)
            pending.finish(None)
            return entry

    def _release(self, entry: _Loaded) -> None:
        with self._lock:
            entry.in_use -= 1
            entry.last_used = self._clock()

    def get(self, name: str, device: str, compute_type: str, threads: int = 0):
        """The shared loaded model (or its `threads` instance), loading it on first use (not
        protected from idle unload)."""
        entry = self._acquire(name, device, compute_type, threads)
        self._release(entry)
        return entry.model

    @contextmanager
    def lease(self, name: str, device: str, compute_type: str, threads: int = 0) -> Iterator[Any]:
        """The shared model (or its `threads` instance), protected from idle unloading until
        the block ends."""
        entry = self._acquire(name, device, compute_type, threads)
        try:
            yield entry.model
        finally:
            self._release(entry)

    def is_loaded(self, name: str) -> bool:
        spec = self._specs.get(name)
        if spec is None:
            return False
        path = spec.path.as_posix()
        with self._lock:
            return any(k[0] == path for k in self._loaded)

    def loaded_count(self) -> int:
        with self._lock:
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
                    self._on_change(entry.name, entry.device, entry.compute_type, False)
        for entry in dropped:
            log.info(
                "unloading idle model %s (%s/%s)", entry.name, entry.device, entry.compute_type
            )
            unload = getattr(entry.model, "unload", None)
            if callable(unload):
                unload()
        names = [e.name for e in dropped]
        dropped.clear()
        if names:
            release_memory()
        return names

    def start_reaper(self, interval_s: float | None = None) -> threading.Thread | None:
        """Check for idle models every `interval_s` in a daemon thread.

        A no-op without idle_unload_s.
        """
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
