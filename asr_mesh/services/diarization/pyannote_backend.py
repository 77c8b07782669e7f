"""The pyannote.audio backend, loaded fully offline from a local pipeline directory.

Expected layout (pyannote/speaker-diarization-community-1, as downloaded ahead of time)::

    DIR/config.yaml                    pipeline: name/params; params: clustering/segmentation
    DIR/segmentation/pytorch_model.bin
    DIR/embedding/pytorch_model.bin
    DIR/plda/xvec_transform.npz, DIR/plda/plda.npz

`config.yaml` may name its models as `$model/<subfolder>` (community-1) or as hub ids
(speaker-diarization-3.1 style, e.g. `pyannote/segmentation-3.0`); either way they are
rewritten to the local subfolders before pyannote sees them, so nothing can reach for the hub.
pyannote.audio 4 always loads a PLDA (the default argument points at the hub), hence `plda/` is
required even for pipelines whose clustering does not use it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asr_mesh.services.common.domain import SAMPLE_RATE

log = logging.getLogger(__name__)

BACKEND_NAME = "pyannote"
MODEL_FILE = "pytorch_model.bin"
REQUIRED = (
    "config.yaml",
    f"segmentation/{MODEL_FILE}",
    f"embedding/{MODEL_FILE}",
    "plda/xvec_transform.npz",
    "plda/plda.npz",
)
# Progress share of each pipeline step, in the order pyannote runs them.
STEPS = {
    "segmentation": (0.0, 0.3),
    "speaker_counting": (0.3, 0.35),
    "embeddings": (0.35, 0.9),
    "discrete_diarization": (0.9, 0.95),
}


class PipelineDirectoryError(RuntimeError):
    """The configured pyannote directory is missing, incomplete or does not load."""


def check_layout(directory: Path) -> None:
    """Raise `PipelineDirectoryError` naming every file the layout lacks."""
    if not directory.is_dir():
        raise PipelineDirectoryError(f"pyannote pipeline directory {directory} does not exist")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise PipelineDirectoryError(
            f"pyannote pipeline directory {directory} lacks {', '.join(missing)} "
            "(expected the speaker-diarization-community-1 layout)"
        )


def local_config(directory: Path) -> dict:
    """config.yaml with every model reference pointed at the local subfolders."""
    import yaml

    try:
        config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineDirectoryError(f"cannot read {directory / 'config.yaml'}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("pipeline"), dict):
        raise PipelineDirectoryError(f"{directory / 'config.yaml'} has no 'pipeline' section")
    config = copy.deepcopy(config)
    name = str(config["pipeline"].get("name", ""))
    if not name.endswith("SpeakerDiarization"):
        raise PipelineDirectoryError(
            f"{directory / 'config.yaml'} describes pipeline {name!r}, not a SpeakerDiarization"
        )
    params = config["pipeline"].setdefault("params", {})
    for key in ("segmentation", "embedding", "plda"):
        # Dicts, not strings: pyannote routes a *string* embedding by substrings such as
        # "wespeaker" or "speechbrain" in it, which a local path may well contain.
        params[key] = {"checkpoint": str(directory), "subfolder": key}
    # Hub credentials and caches have no meaning offline.
    params.pop("token", None)
    params.pop("cache_dir", None)
    return config


class PyannoteBackend:
    """Runs a pyannote `SpeakerDiarization` pipeline loaded from a local directory."""

    name = BACKEND_NAME

    def __init__(self, directory: Path | str, device: str = "cpu", torch_threads: int = 0):
        directory = Path(directory).expanduser().resolve()
        check_layout(directory)
        config = local_config(directory)
        import torch
        from pyannote.audio import Pipeline
        from pyannote.audio.telemetry import set_telemetry_metrics

        set_telemetry_metrics(False)  # no usage reports leave the process, whatever the env says
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        try:
            pipeline = Pipeline.from_pretrained(config)
        except Exception as exc:
            raise PipelineDirectoryError(
                f"pyannote pipeline in {directory} does not load: {type(exc).__name__}: {exc}"
            ) from exc
        if pipeline is None:
            raise PipelineDirectoryError(f"pyannote pipeline in {directory} does not load")
        if "params" not in config:
            pipeline.instantiate(pipeline.default_parameters())
        pipeline.to(torch.device(device))
        self.directory = directory
        self.pipeline = pipeline
        self._torch = torch

    def annotate(
        self,
        audio: np.ndarray,
        min_speakers: int,
        max_speakers: int,
        progress: Callable[[float, str], None] = lambda f, m: None,
    ):
        """Run the pipeline on float32 16 kHz mono audio; returns its speaker `Annotation`."""
        from pyannote.core import Annotation

        # pyannote's segmentation needs at least a few frames; anything shorter has no turns.
        if len(audio) < SAMPLE_RATE // 10:
            return Annotation()
        waveform = self._torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        # An exact count when the bounds meet, else the bounds (None = pyannote's default).
        exact = min_speakers == max_speakers

        def hook(step_name, step_artifact, file=None, total=None, completed=None):
            low, high = STEPS.get(step_name, (0.95, 0.95))
            share = min(completed / total, 1.0) if total and completed is not None else 1.0
            progress(low + (high - low) * share, step_name.replace("_", " "))

        output = self.pipeline(
            {"waveform": waveform, "sample_rate": SAMPLE_RATE, "uri": "request"},
            hook=hook,
            num_speakers=min_speakers if exact else None,
            min_speakers=None if exact else min_speakers,
            max_speakers=None if exact else max_speakers,
        )
        # pyannote.audio 4 returns DiarizeOutput; legacy pipelines return the Annotation itself.
        return getattr(output, "speaker_diarization", output)
