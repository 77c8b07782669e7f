"""Inner spans of the merge: attribution, segmentation, ITN and one span per rendered document."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_merge_itn import timed

from asr_mesh.services.common.domain import SpeakerTurn
from asr_mesh.services.merge import core, documents
from asr_mesh.services.merge.core import DocumentInfo, MergeOptions, OutputFormat, merge
from asr_mesh.services.merge.documents import render_documents


@pytest.fixture()
def spans(monkeypatch):
    """A private tracer for the merge modules, so the process-wide provider is left alone."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(core, "_tracer", tracer)
    monkeypatch.setattr(documents, "_tracer", tracer)
    yield exporter
    provider.shutdown()


def test_each_stage_and_render_has_a_span_with_counts(spans):
    segments = [timed("Custou doze reais. Sim.")]
    turns = [SpeakerTurn("a", 0, 1.0), SpeakerTurn("b", 1.0, 3.0)]
    result = merge(segments, turns, MergeOptions(inverse_text_normalization=True))
    render_documents(
        result, [OutputFormat.SRT, OutputFormat.JSON, OutputFormat.RTTM], DocumentInfo()
    )
    by_name: dict[str, list] = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(dict(span.attributes))
    (attribute,) = by_name["merge.attribute"]
    assert attribute == {"asr.words": 4, "asr.turns": 2, "asr.input_turns": 2}
    (segment,) = by_name["merge.segment"]
    assert segment == {"asr.input_segments": 1, "asr.segments": 2, "asr.speakers": 2}
    (itn,) = by_name["merge.itn"]
    assert itn == {"asr.words": 4, "asr.itn.words_after": 3, "asr.itn.segments_changed": 1}
    renders = {r["asr.format"]: r for r in by_name["merge.render"]}
    assert set(renders) == {"srt", "json", "rttm"}
    assert renders["srt"]["asr.cues"] == 2 and renders["rttm"]["asr.rttm.lines"] == 2
    assert all(r["asr.document.bytes"] > 0 and r["asr.speakers"] == 2 for r in renders.values())


def test_no_itn_span_when_itn_is_off(spans):
    merge([timed("doze reais")])
    assert [s.name for s in spans.get_finished_spans()] == ["merge.attribute", "merge.segment"]
