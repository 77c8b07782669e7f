"""The offline default backend on the corpus conversations (real silero + resemblyzer)."""

# Fixtures are imported from diarization_helpers, so their parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import pytest
from diarization_helpers import conversations, der, encoder_backend  # noqa: F401 (fixtures)

from asr_mesh.services.diarization.core import DiarizationOptions, DiarizationOutcome, Diarizer

pytestmark = pytest.mark.models


def outcome_of(backend, audio, **options) -> DiarizationOutcome:
    *_, outcome = Diarizer(backend).diarize(audio, DiarizationOptions(**options))
    return outcome


def test_der_and_speaker_count_on_the_conversations(encoder_backend, conversations):
    from asr_mesh.services.diarization.embedding import (
        EmbeddingBackendOptions,
        EmbeddingClusteringBackend,
    )

    # corpus-dev's references count the quiet onset and release of each utterance: score with
    # the turn extension that convention needs (the default, 0, suits speech-only references).
    backend = EmbeddingClusteringBackend(
        embedder=encoder_backend.embedder, options=EmbeddingBackendOptions(turn_extension=0.45)
    )
    for name, audio, reference, speakers in conversations:
        outcome = outcome_of(backend, audio)
        assert outcome.backend == "embedding-clustering"
        assert outcome.speaker_count == speakers, name
        error = der(reference, list(outcome.exclusive_turns))
        assert error <= 0.05, f"{name}: DER {error:.2%}"


def test_num_speakers_is_honoured(encoder_backend, conversations):
    _, audio, _, speakers = conversations[1]
    assert (
        outcome_of(encoder_backend, audio, num_speakers=speakers - 1).speaker_count == speakers - 1
    )
    assert (
        outcome_of(encoder_backend, audio, min_speakers=speakers + 1).speaker_count == speakers + 1
    )
    assert outcome_of(encoder_backend, audio, max_speakers=1).speaker_count == 1


def test_same_input_same_output(encoder_backend, conversations):
    _, audio, _, _ = conversations[0]
    first = outcome_of(encoder_backend, audio)
    second = outcome_of(encoder_backend, audio.copy())
    assert first.exclusive_turns == second.exclusive_turns
    assert first.overlaps == second.overlaps


def test_chunked_voice_activity_matches_one_pass(conversations):
    from asr_mesh.services.diarization.embedding import EmbeddingBackendOptions, speech_regions

    _, audio, _, _ = conversations[1]
    from pyannote.core import Segment, Timeline

    whole = speech_regions(audio, EmbeddingBackendOptions(vad_chunk_s=3600))
    chunked = speech_regions(audio, EmbeddingBackendOptions(vad_chunk_s=4))  # 8 chunk edges
    assert abs(len(chunked) - len(whole)) <= 2, "only regions on a chunk edge may differ"
    a = Timeline([Segment(*r) for r in whole]).support()
    b = Timeline([Segment(*r) for r in chunked]).support()
    common = sum(a.crop(seg).duration() for seg in b)
    assert common / b.union(a).support().duration() > 0.97


def test_stage_spans_are_children_of_the_diarize_span(encoder_backend, conversations, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from asr_mesh.services.diarization import core, embedding

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(core, "tracer", provider.get_tracer("core"))
    monkeypatch.setattr(embedding, "tracer", provider.get_tracer("embedding"))
    _, audio, _, _ = conversations[0]
    outcome_of(encoder_backend, audio)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root = spans["diarization.diarize"]
    for stage in ("diarization.vad", "diarization.embedding", "diarization.clustering"):
        assert spans[stage].parent.span_id == root.context.span_id, stage
    assert spans["diarization.embedding"].attributes["asr.batch_size"] == 64
    assert spans["diarization.embedding"].attributes["asr.diarization.batches"] >= 1
    assert spans["diarization.clustering"].attributes["asr.diarization.speakers"] == 2
    assert root.attributes["asr.rtf"] > 0 and root.events
