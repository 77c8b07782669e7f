"""The embedding backend's overlapped-speech pass (asr_mesh/services/diarization/overlap.py).

Pure tests on synthetic embeddings, then one on `short_turns` (benchmarks/gen_dia_hard.py: four
backchannels spoken over the other voice), from build/corpus-hard or synthesised here.
"""

# Fixtures are imported from diarization_helpers, so their parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diarization_helpers import encoder_backend, hard_case, load_audio, load_rttm  # noqa: F401 (fixtures)
from pyannote.core import Segment

from asr_mesh.services.diarization.core import DiarizationOptions, Diarizer
from asr_mesh.services.diarization.overlap import OverlapOptions, overlap_regions, window_scores

OPTIONS = OverlapOptions()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic(overlap: tuple[float, float] | None, seed: int = 0):
    """Two 8 s turns (speakers 0 then 1), 0.8 s windows every 0.2 s; inside `overlap` (seconds,
    within the first turn) the windows mix in speaker 1's voice."""
    rng = np.random.default_rng(seed)
    voices = _unit(rng.normal(size=(2, 256)))
    starts = np.arange(0, 15.2 + 1e-9, 0.2)
    ends = starts + 0.8
    centres = (starts + ends) / 2
    turn = (centres >= 8).astype(int)
    labels = turn.copy()
    embeddings = voices[labels] + rng.normal(scale=0.02, size=(len(starts), 256))
    if overlap is not None:
        shared = (
            np.clip(np.minimum(ends, overlap[1]) - np.maximum(starts, overlap[0]), 0, None) / 0.8
        )
        embeddings = embeddings + (labels == 0)[:, None] * shared[:, None] * voices[1]
    turns = [(0, 0.0, 8.0), (1, 8.0, 16.0)]
    return _unit(embeddings), starts, ends, centres, turn, labels, turns


def test_mixed_windows_score_high_and_point_at_the_joining_voice():
    embeddings, starts, ends, centres, turn, labels, turns = synthetic((3.6, 4.3))
    scores, other = window_scores(embeddings, centres, turn, labels, OPTIONS)
    mixed = (starts < 4.3) & (ends > 3.6) & (turn == 0)
    assert scores[mixed].max() > OPTIONS.threshold > scores[~mixed].max()
    assert other[np.argmax(scores)] == 1
    found = overlap_regions(starts, ends, scores, other, turns, OPTIONS.threshold)
    assert len(found) == 1
    label, start, end = found[0]
    assert label == 1 and 3.2 <= start < end <= 4.7
    assert min(end, 4.3) - max(start, 3.6) > 0.5 * (end - start)  # mostly on the truth


def test_no_mixture_no_overlap():
    embeddings, starts, ends, centres, turn, labels, turns = synthetic(None, seed=1)
    scores, other = window_scores(embeddings, centres, turn, labels, OPTIONS)
    assert overlap_regions(starts, ends, scores, other, turns, OPTIONS.threshold) == []


def test_one_speaker_or_no_context_scores_nothing():
    embeddings, starts, ends, centres, turn, labels, turns = synthetic((3.6, 4.3))
    scores, other = window_scores(
        embeddings, centres, np.zeros_like(turn), np.zeros_like(labels), OPTIONS
    )
    assert not scores.any() and (other == -1).all()
    lonely = OverlapOptions(min_context=1000)
    scores, other = window_scores(embeddings, centres, turn, labels, lonely)
    assert not scores.any()


def test_a_clean_change_of_speaker_is_not_overlap():
    """Windows straddling the change mix both voices by how much of each they cover."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        voices = _unit(rng.normal(size=(2, 256)))
        starts = np.arange(0, 15.2 + 1e-9, 0.2)
        ends = starts + 0.8
        centres = (starts + ends) / 2
        second = np.clip(ends - np.maximum(starts, 8.0), 0, None) / 0.8  # share of the second voice
        embeddings = _unit(
            (1 - second)[:, None] * voices[0]
            + second[:, None] * voices[1]
            + rng.normal(scale=0.02, size=(len(starts), 256))
        )
        turn = (centres >= 8).astype(int)
        scores, other = window_scores(embeddings, centres, turn, turn.copy(), OPTIONS)
        assert (
            overlap_regions(
                starts, ends, scores, other, [(0, 0.0, 8.0), (1, 8.0, 16.0)], OPTIONS.threshold
            )
            == []
        ), seed


def test_regions_stay_inside_their_turn():
    embeddings, starts, ends, centres, turn, labels, turns = synthetic((7.4, 8.0))
    scores, other = window_scores(embeddings, centres, turn, labels, OPTIONS)
    for label, start, end in overlap_regions(starts, ends, scores, other, turns, OPTIONS.threshold):
        assert label == 1 and 0.0 <= start < end <= 8.0


CASE = "short_turns"


@pytest.fixture(scope="module")
def short_turns(tmp_path_factory, corpus) -> Path:
    return hard_case(CASE, tmp_path_factory, corpus)


def with_overlap_pass(encoder_backend):
    """The shared encoder with the (off by default) overlap pass switched on."""
    from asr_mesh.services.diarization.embedding import (
        EmbeddingBackendOptions,
        EmbeddingClusteringBackend,
    )

    return EmbeddingClusteringBackend(
        embedder=encoder_backend.embedder,
        options=EmbeddingBackendOptions(overlap=OverlapOptions(enabled=True)),
    )


def test_the_pass_is_off_by_default():
    from asr_mesh.services.diarization.embedding import EmbeddingBackendOptions
    from asr_mesh.services.diarization.server import DiarizationSettings

    assert not OverlapOptions().enabled and not EmbeddingBackendOptions().overlap.enabled
    assert not DiarizationSettings().detect_overlaps


@pytest.mark.models
def test_backchannels_over_a_turn_are_found(encoder_backend, short_turns):
    audio = load_audio(short_turns / f"{CASE}.flac")
    truth = load_rttm(short_turns / f"{CASE}.rttm").get_overlap()
    *_, outcome = Diarizer(with_overlap_pass(encoder_backend)).diarize(audio, DiarizationOptions())
    found = [(r.start, r.end) for r in outcome.overlaps]
    assert found, "no overlap found"
    hit = sum(truth.crop(Segment(a, b)).duration() for a, b in found)
    total = sum(b - a for a, b in found)
    assert hit >= 0.5 * total, f"only {hit:.1f} of {total:.1f} s found lies on true overlap"
    assert hit >= 0.3 * truth.duration(), f"{hit:.1f} of {truth.duration():.1f} s of overlap found"


@pytest.mark.models
def test_the_service_setting_switches_the_pass(monkeypatch, encoder_backend, short_turns):
    from asr_mesh.services.diarization import embedding
    from asr_mesh.services.diarization.server import DiarizationSettings, build_backend

    # The shared encoder stands in for a second copy of the model: only the options are checked.
    monkeypatch.setattr(
        embedding, "VoiceEncoderEmbedder", lambda threads, on_batch=None: encoder_backend.embedder
    )
    backend = build_backend(DiarizationSettings())
    assert not backend.options.overlap.enabled
    audio = load_audio(short_turns / f"{CASE}.flac")  # overlaps are found here with the pass on
    *_, outcome = Diarizer(backend).diarize(audio, DiarizationOptions())
    assert not outcome.overlaps and len(outcome.exclusive_turns) > 1
    monkeypatch.setenv("ASR_DIARIZATION_DETECT_OVERLAPS", "true")
    switched_on = build_backend(DiarizationSettings())
    assert switched_on.options.overlap.enabled
    *_, outcome = Diarizer(switched_on).diarize(audio, DiarizationOptions())
    assert outcome.overlaps
