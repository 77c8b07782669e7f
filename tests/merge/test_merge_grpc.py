"""A real merge server in process: the contract end to end, and errors as statuses."""

from __future__ import annotations

import io
import json

import grpc
import pytest
import srt
import webvtt
from conftest import channel_to
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from asr.common.v1 import document_pb2, transcript_pb2
from asr.merge.v1 import merge_service_pb2 as pb
from asr.merge.v1 import merge_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.errors import InvalidInput, from_rpc_error
from asr_mesh.services.merge.server import MergeSettings, create_server

pytestmark = pytest.mark.grpc


@pytest.fixture(scope="module")
def stub():
    handle = create_server(MergeSettings(port=0, max_workers=2))
    channel = channel_to(handle.port)
    try:
        yield pb_grpc.MergeServiceStub(channel), channel
    finally:
        channel.close()
        handle.stop(0)


def _word(start: float, end: float, text: str) -> transcript_pb2.Word:
    return transcript_pb2.Word(
        word=text,
        start_offset=convert.duration(start),
        end_offset=convert.duration(end),
        probability=0.875,
    )


def _turn(speaker: str, start: float, end: float) -> transcript_pb2.SpeakerTurn:
    return transcript_pb2.SpeakerTurn(
        speaker=speaker, start_offset=convert.duration(start), end_offset=convert.duration(end)
    )


def _request(**kw) -> pb.MergeRequest:
    words = [
        _word(0.0, 0.4, "Bom"),
        _word(0.4, 0.9, "dia,"),
        _word(0.9, 1.5, "tudo"),
        _word(1.5, 2.0, "bem?"),
        _word(2.3, 2.8, "Tudo"),
        _word(2.8, 3.4, "ótimo,"),
        _word(3.4, 4.0, "obrigada."),
    ]
    segment = transcript_pb2.Segment(
        id=0,
        start_offset=convert.duration(0),
        end_offset=convert.duration(4),
        text="ignored",
        words=words,
        avg_logprob=-0.25,
    )
    defaults = {
        "segments": [segment],
        "turns": [_turn("spk7", 0.0, 2.1), _turn("spk3", 2.1, 4.2)],
        "formats": [
            document_pb2.OUTPUT_FORMAT_JSON,
            document_pb2.OUTPUT_FORMAT_SRT,
            document_pb2.OUTPUT_FORMAT_VTT,
            document_pb2.OUTPUT_FORMAT_TXT,
            document_pb2.OUTPUT_FORMAT_RTTM,
        ],
        "language_code": "pt-BR",
        "audio_duration": convert.duration(5.0),
        "speaker_names": {"SPEAKER_01": "Conceição"},
        "recording_id": "entrevista ação.flac",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    defaults.update(kw)
    return pb.MergeRequest(**defaults)


def test_merge_returns_segments_speakers_and_documents(stub):
    service, channel = stub
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="asr.merge.v1.MergeService"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    response = service.Merge(_request(), timeout=10)
    assert list(response.speakers) == ["SPEAKER_00", "SPEAKER_01"]
    assert [(s.id, s.speaker, s.text) for s in response.segments] == [
        (0, "SPEAKER_00", "Bom dia, tudo bem?"),
        (1, "SPEAKER_01", "Tudo ótimo, obrigada."),
    ]
    assert all(w.speaker == s.speaker for s in response.segments for w in s.words)
    assert response.segments[1].avg_logprob == pytest.approx(-0.25)

    docs = {d.format: d for d in response.documents}
    assert [d.file_extension for d in response.documents] == ["json", "srt", "vtt", "txt", "rttm"]
    assert docs[document_pb2.OUTPUT_FORMAT_SRT].media_type == "application/x-subrip"

    doc = json.loads(docs[document_pb2.OUTPUT_FORMAT_JSON].content)
    assert doc["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert doc["recording_id"] == "entrevista ação.flac"
    assert doc["language"] == "pt-BR" and doc["duration"] == 5.0
    assert doc["speaker_names"] == {"SPEAKER_01": "Conceição"}
    assert doc["segments"][1]["words"][1]["word"] == "ótimo,"

    subs = list(srt.parse(docs[document_pb2.OUTPUT_FORMAT_SRT].content))
    assert [s.content for s in subs] == [
        "[SPEAKER_00] Bom dia, tudo bem?",
        "[Conceição] Tudo ótimo, obrigada.",
    ]
    captions = list(webvtt.from_buffer(io.StringIO(docs[document_pb2.OUTPUT_FORMAT_VTT].content)))
    assert [c.voice for c in captions] == ["SPEAKER_00", "Conceição"]
    assert docs[document_pb2.OUTPUT_FORMAT_TXT].content == (
        "SPEAKER_00: Bom dia, tudo bem?\n\nConceição: Tudo ótimo, obrigada.\n"
    )
    assert docs[document_pb2.OUTPUT_FORMAT_RTTM].content.splitlines()[1] == (
        "SPEAKER entrevista_ação.flac 1 2.100 2.100 <NA> <NA> SPEAKER_01 <NA> <NA>"
    )


def test_without_turns_or_formats_segments_stay_unlabelled(stub):
    service, _ = stub
    response = service.Merge(_request(turns=[], formats=[]), timeout=10)
    assert list(response.speakers) == [] and list(response.documents) == []
    assert [s.text for s in response.segments] == ["Bom dia, tudo bem?", "Tudo ótimo, obrigada."]
    assert all(s.speaker == "" for s in response.segments)


def test_unspecified_format_is_invalid_argument_with_a_sentence(stub):
    service, _ = stub
    request = _request(
        formats=[document_pb2.OUTPUT_FORMAT_SRT, document_pb2.OUTPUT_FORMAT_UNSPECIFIED]
    )
    with pytest.raises(grpc.RpcError) as caught:
        service.Merge(request, timeout=10)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        err.details()
        == "formats[1] is OUTPUT_FORMAT_UNSPECIFIED; ask for JSON, SRT, VTT, TXT or RTTM"
    )
    status = rpc_status.from_call(err)
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [v.field for v in bad.field_violations]
    assert violations == ["formats[1]"]
    assert isinstance(from_rpc_error(err), InvalidInput)


def test_inverted_turn_is_invalid_argument(stub):
    service, _ = stub
    with pytest.raises(grpc.RpcError) as caught:
        service.Merge(_request(turns=[_turn("a", 0, 2), _turn("b", 3, 2.5)]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "speaker turn 1 (b) ends at 2.500 s, before it starts at 3.000 s" in caught.value.details()
    )


def test_inverse_text_normalization_is_opt_in(stub):
    service, _ = stub
    words = [
        _word(0.0, 0.3, "Custou"),
        _word(0.3, 0.6, "mil"),
        _word(0.6, 1.0, "duzentos"),
        _word(1.0, 1.1, "e"),
        _word(1.1, 1.6, "cinquenta"),
        _word(1.6, 2.0, "reais."),
    ]
    segment = transcript_pb2.Segment(
        id=0, start_offset=convert.duration(0), end_offset=convert.duration(2), words=words
    )
    request = _request(
        segments=[segment], turns=[_turn("a", 0, 2)], formats=[document_pb2.OUTPUT_FORMAT_SRT]
    )
    plain = service.Merge(request, timeout=10)
    assert plain.segments[0].text == "Custou mil duzentos e cinquenta reais."

    request.inverse_text_normalization = True
    response = service.Merge(request, timeout=10)
    seg = response.segments[0]
    assert seg.text == "Custou R$ 1.250,00."
    money = seg.words[1]
    assert money.word == "R$ 1.250,00." and money.speaker == "SPEAKER_00"
    assert convert.seconds(money.start_offset) == pytest.approx(0.3)
    assert convert.seconds(money.end_offset) == pytest.approx(2.0)
    assert list(srt.parse(response.documents[0].content))[0].content == (
        "[SPEAKER_00] Custou R$ 1.250,00."
    )
