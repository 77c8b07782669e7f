"""The offline default backend on the corpus conversations (real silero + resemblyzer)."""

# Fixtures are imported from diarization_helpers, so their parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import pytest
from diarization_helpers import conversations, der, encoder_backend  # noqa: F401 (fixtures)

from services.diarization.core import DiarizationOptions, DiarizationOutcome, Diarizer

pytestmark = pytest.mark.models


def outcome_of(backend, audio, **options) -> DiarizationOutcome:
    *_, outcome = Diarizer(backend).diarize(audio, DiarizationOptions(**options))
    return outcome


def test_der_and_speaker_count_on_the_conversations(encoder_backend, conversations):
    for name, audio, reference, speakers in conversations:
        outcome = outcome_of(encoder_backend, audio)
        assert outcome.backend == "embedding-clustering"
        assert outcome.speaker_count == speakers, name
        error = der(reference, list(outcome.exclusive_turns))
        assert error <= 0.05, f"{name}: DER {error:.2%}"


def test_num_speakers_is_honoured(encoder_backend, conversations):
    _, audio, _, speakers = conversations[1]
    assert outcome_of(encoder_backend, audio, num_speakers=speakers - 1).speaker_count == speakers - 1
    assert outcome_of(encoder_backend, audio, min_speakers=speakers + 1).speaker_count == speakers + 1
    assert outcome_of(encoder_backend, audio, max_speakers=1).speaker_count == 1


def test_same_input_same_output(encoder_backend, conversations):
    _, audio, _, _ = conversations[0]
    first = outcome_of(encoder_backend, audio)
    second = outcome_of(encoder_backend, audio.copy())
    assert first.exclusive_turns == second.exclusive_turns
    assert first.overlaps == second.overlaps
