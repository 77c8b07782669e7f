"""The JSON document against its published schema (docs/transcript.schema.json), with jsonschema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from test_merge_itn import itn_conversations, timed

from asr_mesh.services.common.domain import Segment, SpeakerTurn
from asr_mesh.services.merge.core import DocumentInfo, MergeOptions, merge
from asr_mesh.services.merge.documents import render_json

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "docs" / "transcript.schema.json").read_text("utf-8")
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
INFO = DocumentInfo(
    language="pt-BR",
    duration=30.0,
    recording_id="reunião de março.wav",
    trace_id="0af7651916cd43dd8448eb211c80319c",
    speaker_names={"SPEAKER_01": "Joana"},
)


def validate(content: str) -> dict:
    doc = json.loads(content)
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    return doc


def test_the_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("itn", [False, True])
def test_documents_match_the_schema(itn):
    segments = [
        timed("Você pagou mil duzentos e cinquenta reais?"),
        timed("Sim, doze por cento a mais.", start=4.0),
        Segment(2, 8.0, 9.5, "sem marcas de tempo", ()),
    ]
    turns = [SpeakerTurn("x", 0, 3.9), SpeakerTurn("y", 3.9, 12.0), SpeakerTurn("z", 20, 21)]
    doc = validate(
        render_json(merge(segments, turns, MergeOptions(inverse_text_normalization=itn)), INFO)
    )
    assert doc["speaker_names"] == {"SPEAKER_01": "Joana"}
    assert ("R$ 1.250,00?" in doc["segments"][0]["text"]) == itn


def test_minimal_documents_match_the_schema():
    validate(render_json(merge([], []), DocumentInfo()))
    doc = validate(render_json(merge([timed("só eu falo")]), DocumentInfo()))
    assert doc["segments"][0]["speaker"] is None


def test_the_schema_rejects_what_it_should():
    doc = validate(render_json(merge([timed("olá")], [SpeakerTurn("a", 0, 1)]), INFO))
    broken = json.loads(json.dumps(doc))
    broken["segments"][0]["words"][0]["probability"] = 1.5
    assert not VALIDATOR.is_valid(broken)
    broken = json.loads(json.dumps(doc))
    broken["speakers"] = ["Ana"]
    assert not VALIDATOR.is_valid(broken)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversation=itn_conversations())
def test_random_transcripts_match_the_schema(conversation):
    segments, turns = conversation
    validate(
        render_json(merge(segments, turns, MergeOptions(inverse_text_normalization=True)), INFO)
    )
