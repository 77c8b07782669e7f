"""The model registry: model names → local CTranslate2 directories, and loaded instances.

No weights are ever downloaded. A model is a directory holding `model.bin` beside
`config.json` and the tokenizer, either directly under the models directory
(`models/whisper-base/`) or in Hugging Face cache layout
(`models/models--Systran--faster-whisper-large-v3/snapshots/<rev>/`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

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


class ModelRegistry:
    """Resolves model names and keeps one loaded instance per (model, device, compute type)."""

    def __init__(self, models_dir: Path, default_model: str, loader):
        self._models_dir = models_dir
        self._specs = discover_models(models_dir)
        self.default_model = default_model
        self._loader = loader
        self._loaded: dict[tuple[str, str, str], object] = {}
        self._lock = threading.Lock()

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

    def get(self, name: str, device: str, compute_type: str):
        """The shared loaded model, loading it on first use."""
        spec = self.resolve(name)
        key = (spec.path.as_posix(), device, compute_type)
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                log.info("loading model %s from %s on %s/%s", spec.name, spec.path, device, compute_type)
                model = self._loader(spec, device, compute_type)
                self._loaded[key] = model
            return model

    def is_loaded(self, name: str) -> bool:
        spec = self._specs.get(name)
        return spec is not None and any(k[0] == spec.path.as_posix() for k in self._loaded)
