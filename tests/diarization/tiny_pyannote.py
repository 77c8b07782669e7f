"""Builds a small pyannote pipeline directory in the community-1 layout (tests only).

The real weights live on a model hub that is out of reach, so tests make their own: a randomly
initialised PyanNet (powerset, 3 speakers) whose output bias favours "speaker #1 alone" so that
the pipeline has speech to embed, a random XVectorMFCC embedding and a synthetic PLDA. Quality is
meaningless; what is tested is the offline loading and running code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

CONFIG = {
    "dependencies": {"pyannote.audio": "4.0.0"},
    "pipeline": {
        "name": "pyannote.audio.pipelines.SpeakerDiarization",
        "params": {
            "clustering": "VBxClustering",
            "embedding": "$model/embedding",
            "embedding_batch_size": 8,
            "embedding_exclude_overlap": True,
            "plda": "$model/plda",
            "segmentation": "$model/segmentation",
            "segmentation_batch_size": 8,
            "segmentation_step": 0.5,
        },
    },
    "params": {
        "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
        "segmentation": {"min_duration_off": 0.0},
    },
}


def _save(model, path: Path) -> None:
    """Write a checkpoint the way Lightning + `Model.on_save_checkpoint` would."""
    import lightning

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def build(directory: Path, embedding_dim: int = 32, lda_dim: int = 16, seed: int = 0) -> Path:
    """Create config.yaml, segmentation/, embedding/ and plda/ under `directory`."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorMFCC
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(seed)
    segmentation = PyanNet(
        sincnet={"stride": 10},
        lstm={"hidden_size": 16, "num_layers": 1},
        linear={"hidden_size": 16, "num_layers": 1},
    )
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=2.0,
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    segmentation.build()
    with torch.no_grad():  # powerset class 1 = speaker #1 alone: always "someone is speaking"
        segmentation.classifier.bias.zero_()
        segmentation.classifier.bias[1] = 8.0
    _save(segmentation, directory / "segmentation" / "pytorch_model.bin")

    embedding = XVectorMFCC(dimension=embedding_dim)
    embedding.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=2.0
    )
    _save(embedding, directory / "embedding" / "pytorch_model.bin")

    rng = np.random.default_rng(seed)
    lda, _ = np.linalg.qr(rng.standard_normal((embedding_dim, lda_dim)))
    (directory / "plda").mkdir(parents=True, exist_ok=True)
    np.savez(
        directory / "plda" / "xvec_transform.npz",
        mean1=np.zeros(embedding_dim),
        mean2=np.zeros(lda_dim),
        lda=lda,
    )
    np.savez(
        directory / "plda" / "plda.npz",
        mu=np.zeros(lda_dim),
        tr=np.eye(lda_dim),
        psi=np.linspace(2.0, 0.5, lda_dim),
    )
    (directory / "config.yaml").write_text(
        yaml.safe_dump(CONFIG, sort_keys=False), encoding="utf-8"
    )
    return directory
