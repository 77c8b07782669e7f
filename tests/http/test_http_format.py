"""Pure pieces of the HTTP front door: form validation, OpenAI shapes, the status table."""

from __future__ import annotations

import pytest

from asr_mesh.services.common.errors import (
    DependencyUnavailable,
    FailedPrecondition,
    InternalError,
    InvalidAudio,
    LimitExceeded,
    NotFound,
    Overloaded,
    UnknownModel,
    status_code,
)
from asr_mesh.services.http import openai_format as oa
from asr_mesh.services.http.app import mesh_http_error, stream_event_dict
from asr_mesh.services.http.audio import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, PcmChunker

MESH_JSON = {
    "version": 1,
    "language": "pt-BR",
    "duration": 4.25,
    "segments": [
        {
            "id": 0,
            "start": 0.0,
            "end": 1.5,
            "speaker": "SPEAKER_00",
            "text": "Olá, tudo bem?",
            "avg_logprob": -0.2,
            "no_speech_prob": 0.01,
            "compression_ratio": 1.1,
            "words": [
                {
                    "start": 0.0,
                    "end": 0.4,
                    "word": "Olá,",
                    "probability": 0.9,
                    "speaker": "SPEAKER_00",
                },
                {
                    "start": 0.4,
                    "end": 0.9,
                    "word": "tudo",
                    "probability": 0.9,
                    "speaker": "SPEAKER_00",
                },
                {
                    "start": 0.9,
                    "end": 1.5,
                    "word": "bem?",
                    "probability": 0.9,
                    "speaker": "SPEAKER_00",
                },
            ],
        },
        {
            "id": 1,
            "start": 2.0,
            "end": 3.0,
            "speaker": None,
            "text": "Sim.",
            "avg_logprob": -0.5,
            "no_speech_prob": 0.2,
            "compression_ratio": 0.9,
            "words": [
                {"start": 2.0, "end": 3.0, "word": "Sim.", "probability": 0.7, "speaker": None}
            ],
        },
    ],
}


def form(**fields):
    return {k.replace("__", "[]"): v if isinstance(v, list) else [v] for k, v in fields.items()}


def test_defaults_and_openai_names():
    req = oa.parse_transcription_form(form(model="whisper-1", language="pt"))
    assert req.model == "" and req.language == "pt" and req.response_format == "json"
    assert req.mesh_formats() == ("json",) and not req.diarize
    assert oa.parse_transcription_form(form(model="base")).model == "base"
    assert oa.parse_transcription_form(form(response_format="srt")).mesh_formats() == ("srt",)


def test_word_granularity_and_diarization_extras():
    req = oa.parse_transcription_form(
        form(
            response_format="verbose_json",
            timestamp_granularities__=["word", "segment"],
            num_speakers="2",
            temperature="0.2",
            prompt="reunião",
        )
    )
    assert req.granularities == ("word", "segment") and req.diarize and req.num_speakers == 2
    assert req.temperature == pytest.approx(0.2) and req.prompt == "reunião"
    assert oa.parse_transcription_form(form(diarize="true")).diarize
    assert oa.parse_transcription_form(form(no_cache="1")).no_cache


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "xml"}, "response_format"),
        ({"timestamp_granularities__": ["word"]}, "timestamp_granularities"),  # needs verbose_json
        (
            {"response_format": "verbose_json", "timestamp_granularities__": ["char"]},
            "timestamp_granularities",
        ),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": "1.5"}, "temperature"),
        ({"language": "português"}, "language"),
        ({"diarize": "maybe"}, "diarize"),
        ({"num_speakers": "two"}, "num_speakers"),
        ({"min_speakers": "3", "max_speakers": "2"}, "min_speakers"),
        ({"model": ["a", "b"]}, "model"),
    ],
)
def test_bad_fields_are_400_naming_the_field(fields, param):
    with pytest.raises(oa.HttpError) as err:
        oa.parse_transcription_form(form(**fields))
    assert err.value.status == 400 and err.value.param == param
    body = err.value.body()["error"]
    assert (
        set(body) == {"message", "type", "param", "code"}
        and body["type"] == "invalid_request_error"
    )


@pytest.mark.parametrize(
    "media_type",
    [
        "audio/wav",
        "audio/mpeg",
        "video/mp4",
        "application/octet-stream",
        "",
        "audio/webm;codecs=opus",
    ],
)
def test_audio_media_types_pass(media_type):
    oa.check_file_media_type(media_type, "x")


@pytest.mark.parametrize("media_type", ["text/plain", "image/png", "application/pdf"])
def test_non_audio_media_types_are_refused(media_type):
    with pytest.raises(oa.HttpError) as err:
        oa.check_file_media_type(media_type, "notes.txt")
    assert err.value.status == 400 and err.value.code == "invalid_file_format"


def test_verbose_json_follows_openai_shape():
    req = oa.TranscriptionRequest(
        response_format="verbose_json", granularities=("word", "segment"), temperature=0.2
    )
    body = oa.to_verbose_json(MESH_JSON, req)
    assert body["task"] == "transcribe" and body["language"] == "portuguese"
    assert body["duration"] == 4.25 and body["text"] == "Olá, tudo bem? Sim."
    assert [set(s) for s in body["segments"]] == [
        {
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
            "speaker",
        },
        {
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        },
    ]
    second = body["segments"][1]
    assert (second["id"], second["seek"], second["start"], second["end"]) == (1, 200, 2.0, 3.0)
    assert (
        second["avg_logprob"] == -0.5
        and second["no_speech_prob"] == 0.2
        and second["temperature"] == 0.2
    )
    assert [w["word"] for w in body["words"]] == ["Olá,", "tudo", "bem?", "Sim."]
    assert body["words"][1] == {"word": "tudo", "start": 0.4, "end": 0.9, "speaker": "SPEAKER_00"}
    segments_only = oa.to_verbose_json(
        MESH_JSON, oa.TranscriptionRequest(response_format="verbose_json")
    )
    assert "words" not in segments_only and len(segments_only["segments"]) == 2
    assert oa.to_openai_json(MESH_JSON) == {"text": "Olá, tudo bem? Sim."}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidAudio("not audio"), 400, "invalid_audio"),
        (UnknownModel("no such model"), 400, "unknown_model"),
        (LimitExceeded("too long"), 413, "limit_exceeded"),
        (Overloaded("busy", retry_after_s=2.5), 429, "overloaded"),
        (DependencyUnavailable("down"), 503, "dependency_unavailable"),
        (NotFound("no job"), 404, "not_found"),
        (FailedPrecondition("no diarization"), 400, "failed_precondition"),
        (InternalError("boom"), 500, "internal"),
    ],
)
def test_mesh_errors_map_to_http(error, status, code):
    http = mesh_http_error(error)
    assert (http.status, http.code, http.message) == (status, code, error.message)
    if status == 429:
        assert http.headers["Retry-After"] == "3"  # rounded up, whole seconds
    assert oa.STATUS_TABLE[status_code(error).name][0] in (status, 400)


def test_pcm_chunker_keeps_every_byte_in_legal_pieces():
    chunker = PcmChunker()
    sizes = [1, 333, 10_000, 50_000, 7, 639, 2]
    out = [piece for size in sizes for piece in chunker.push(b"\1" * size)] + chunker.flush()
    assert sum(map(len, out)) == sum(sizes) - sum(sizes) % 2
    assert all(len(p) % 2 == 0 and len(p) <= MAX_CHUNK_BYTES for p in out)
    assert all(len(p) >= MIN_CHUNK_BYTES for p in out[:-1])


def test_stream_events_become_json_messages():
    from asr.common.v1 import streaming_pb2 as spb
    from asr.common.v1 import transcript_pb2 as tpb

    interim = spb.StreamingEvent(interim=spb.StreamingInterimResult(text=" olá ", stability=0.5))
    interim.interim.end_offset.FromMilliseconds(1250)
    assert stream_event_dict(interim) == {
        "type": "interim",
        "text": "olá",
        "stability": 0.5,
        "start": 0.0,
        "end": 1.25,
    }
    seg = tpb.Segment(
        text="Olá mundo", speaker="SPEAKER_01", words=[tpb.Word(word="Olá", probability=0.9)]
    )
    seg.end_offset.FromMilliseconds(2000)
    final = stream_event_dict(spb.StreamingEvent(final=spb.StreamingFinalResult(segment=seg)))
    assert final["type"] == "final" and final["speaker"] == "SPEAKER_01" and final["end"] == 2.0
    assert final["words"][0]["word"] == "Olá"
