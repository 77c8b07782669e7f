"""One option model: RecognitionOptions, the deprecated flat fields, defaults and maps in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest
from conftest import channel_to
from fakes import FakeStages
from test_gateway_grpc import call, gateway  # noqa: F401 (fixture)

from asr.common.v1 import document_pb2, options_pb2, quality_pb2
from asr.common.v1 import streaming_pb2 as common_streaming_pb2
from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from asr.gateway.v1 import streaming_pb2 as gw_streaming_pb2
from asr.transcription.v1 import streaming_pb2 as tr_streaming_pb2
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.client.sdk import TranscribeOptions
from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import Segment, Word
from asr_mesh.services.common.errors import InvalidInput
from asr_mesh.services.common.options import (
    DEFAULT_LANGUAGE,
    FLAT_FIELDS,
    from_config,
    streaming_config,
    to_flat_dict,
)
from asr_mesh.services.common.server import build_server
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.gateway.fanout import shift_segment
from asr_mesh.services.gateway.jobs import JobRecord, options_to_dict
from asr_mesh.services.gateway.result_cache import canonical_options
from asr_mesh.services.gateway.server import GatewaySettings, create_server
from asr_mesh.services.gateway.servicer import chain_options

REPO = Path(__file__).resolve().parents[2]

FLAT = dict(
    language_code="en",
    diarize=True,
    num_speakers=0,
    min_speakers=2,
    max_speakers=4,
    model="base",
    output_formats=[document_pb2.OUTPUT_FORMAT_SRT, document_pb2.OUTPUT_FORMAT_RTTM],
    speaker_names={"SPEAKER_00": "Ana"},
    beam_size=3,
    initial_prompt="reunião",
    temperatures=[0.0],
    loudness_normalization=True,
    inverse_text_normalization=True,
    quality_profile=quality_pb2.QUALITY_PROFILE_FAST,
    best_of=2,
    hotwords="Itaú Pix",
)
NESTED = options_pb2.RecognitionOptions(
    audio=options_pb2.AudioOptions(loudness_normalization=True),
    transcription=options_pb2.TranscriptionOptions(
        language_code="en",
        model="base",
        quality_profile=quality_pb2.QUALITY_PROFILE_FAST,
        beam_size=3,
        best_of=2,
        temperatures=[0.0],
        initial_prompt="reunião",
        hotwords="Itaú Pix",
    ),
    diarization=options_pb2.DiarizationOptions(enabled=True, min_speakers=2, max_speakers=4),
    output=options_pb2.OutputOptions(
        formats=[document_pb2.OUTPUT_FORMAT_SRT, document_pb2.OUTPUT_FORMAT_RTTM],
        speaker_names={"SPEAKER_00": "Ana"},
        inverse_text_normalization=True,
    ),
)


def test_every_flat_field_has_a_place_in_the_nested_message():
    flat_fields = set(pb.TranscribeConfig.DESCRIPTOR.fields_by_name)
    request_fields = {"filename", "options", "upload_size_bytes", "no_cache"}
    assert set(FLAT_FIELDS) == flat_fields - request_fields
    for part, field in FLAT_FIELDS.values():
        assert field in getattr(options_pb2.RecognitionOptions(), part).DESCRIPTOR.fields_by_name


def test_flat_nested_and_both_give_the_same_effective_options():
    flat = from_config(pb.TranscribeConfig(filename="a.wav", **FLAT))
    nested = from_config(pb.TranscribeConfig(filename="a.wav", options=NESTED))
    contrary = dict(FLAT, language_code="es", diarize=False, beam_size=9, output_formats=[])
    both = from_config(pb.TranscribeConfig(filename="a.wav", options=NESTED, **contrary))
    assert flat == nested == both
    assert flat.transcription.language_code == "en" and flat.diarization.enabled
    assert flat.audio.loudness_normalization and not flat.audio.trim_silence  # default filled


def test_when_both_are_set_options_wins_as_a_whole():
    config = pb.TranscribeConfig(
        options=options_pb2.RecognitionOptions(
            transcription=options_pb2.TranscriptionOptions(model="small")
        ),
        **FLAT,
    )
    chosen = from_config(config)
    assert chosen.transcription.model == "small"
    # What `options` leaves unset is the default, not the flat field's value.
    assert chosen.transcription.language_code == DEFAULT_LANGUAGE
    assert not chosen.diarization.enabled and not chosen.audio.loudness_normalization
    assert list(chosen.output.formats) == [document_pb2.OUTPUT_FORMAT_JSON]


def test_empty_config_gives_the_defaults():
    chosen = from_config(pb.TranscribeConfig())
    assert chosen.transcription.language_code == DEFAULT_LANGUAGE
    assert list(chosen.output.formats) == [document_pb2.OUTPUT_FORMAT_JSON]
    assert chosen.transcription.quality_profile == quality_pb2.QUALITY_PROFILE_UNSPECIFIED
    assert (chosen.audio.loudness_normalization, chosen.audio.trim_silence) == (False, False)


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        (
            pb.TranscribeConfig(quality_profile=42),
            "config.quality_profile",
            "unknown quality profile 42; choose from max_quality, balanced, fast",
        ),
        (
            pb.TranscribeConfig(
                options=options_pb2.RecognitionOptions(
                    transcription=options_pb2.TranscriptionOptions(quality_profile=42)
                )
            ),
            "config.options.transcription.quality_profile",
            "unknown quality profile 42",
        ),
        (
            pb.TranscribeConfig(
                options=options_pb2.RecognitionOptions(
                    output=options_pb2.OutputOptions(formats=[9])
                )
            ),
            "config.options.output.formats",
            "output format 9 is not one of json, srt, vtt, txt, rttm",
        ),
        (
            pb.TranscribeConfig(
                options=options_pb2.RecognitionOptions(
                    diarization=options_pb2.DiarizationOptions(num_speakers=2)
                )
            ),
            "config.options.diarization.enabled",
            "options.diarization.enabled=true is needed for num_speakers",
        ),
    ],
)
def test_bad_options_are_refused_with_a_sentence_naming_the_field(config, field, words):
    with pytest.raises(InvalidInput) as err:
        from_config(config)
    assert words in err.value.message and err.value.field == field


def test_unknown_enum_in_options_is_invalid_argument_over_grpc(gateway):  # noqa: F811
    stub, _, _ = gateway
    bad = options_pb2.RecognitionOptions(
        transcription=options_pb2.TranscriptionOptions(quality_profile=7)
    )
    with pytest.raises(grpc.RpcError) as err:
        call(stub, b"x", options=bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown quality profile 7; choose from" in err.value.details()


def test_the_nested_options_reach_the_chain(gateway):  # noqa: F811
    stub, holder, _ = gateway
    holder["stages"] = FakeStages()
    call(stub, b"RIFFdata", options=NESTED)
    chosen = holder["stages"].options.recognition
    assert chosen == from_config(pb.TranscribeConfig(options=NESTED))
    assert holder["stages"].options.formats == ("srt", "rttm")


def test_job_records_and_cache_keys_keep_their_flat_form():
    flat = chain_options(pb.TranscribeConfig(filename="talk.flac", **FLAT))
    nested = chain_options(pb.TranscribeConfig(filename="talk.flac", options=NESTED))
    assert canonical_options(flat) == canonical_options(nested)
    stored = options_to_dict(nested)
    # The keys and value forms job records held before the nested message existed.
    assert stored["formats"] == ["srt", "rttm"] and stored["quality_profile"] == "fast"
    assert stored["diarize"] is True and stored["speaker_names"] == {"SPEAKER_00": "Ana"}
    assert set(stored) == set(FLAT_FIELDS) - {"output_formats"} | {"formats", "filename"}
    back = JobRecord("0" * 32, stored).chain_options()
    assert back == nested and back.filename == "talk.flac"
    assert to_flat_dict(back.recognition) == to_flat_dict(nested.recognition)


def test_the_sdk_builds_the_nested_message_the_gateway_reads_as_the_flat_one():
    options = TranscribeOptions(
        language_code="en",
        diarize=True,
        min_speakers=2,
        max_speakers=4,
        model="base",
        formats=("srt", "rttm"),
        speaker_names={"SPEAKER_00": "Ana"},
        temperatures=(0.0,),
        quality_profile="fast",
        best_of=2,
        hotwords="Itaú Pix",
        inverse_text_normalization=True,
        loudness_normalization=True,
        beam_size=3,
        initial_prompt="reunião",
    )
    assert options.recognition_options() == NESTED
    config = options.to_proto("a.wav")
    assert config.options == NESTED
    # The deprecated flat copy, for gateways from before `options`, says the same.
    flat_only = pb.TranscribeConfig()
    flat_only.CopyFrom(config)
    flat_only.ClearField("options")
    assert from_config(flat_only) == from_config(config) == from_config(pb.TranscribeConfig(**FLAT))
    unset = TranscribeOptions().recognition_options()
    assert not unset.audio.HasField("loudness_normalization")  # None: the gateway's default
    with pytest.raises(InvalidInput, match="unknown quality profile 'best'"):
        TranscribeOptions(quality_profile="best").recognition_options()


def _string_literals(paths) -> list[str]:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value == "pt-BR":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_the_default_language_is_written_once_on_each_side():
    server = _string_literals(sorted((REPO / "asr_mesh" / "services").rglob("*.py")))
    assert server == [
        f"asr_mesh/services/common/options.py:{_line('asr_mesh/services/common/options.py')}"
    ]
    client = _string_literals(sorted((REPO / "clients" / "src").rglob("*.py")))
    assert client == [
        f"clients/src/asr_mesh/client/sdk.py:{_line('clients/src/asr_mesh/client/sdk.py')}"
    ]


def _line(relative: str) -> int:
    lines = (REPO / relative).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith('DEFAULT_LANGUAGE = "'))


def test_streaming_takes_the_shared_transcription_options():
    config = common_streaming_pb2.StreamingConfig(
        language_code="es",
        model="tiny",
        interim_results=True,
        transcription=options_pb2.TranscriptionOptions(language_code="en", initial_prompt="oi"),
    )
    folded = streaming_config(config)
    assert not folded.HasField("transcription") and folded.interim_results
    # It wins as a whole: the model it leaves empty is the service default, not "tiny".
    assert (folded.language_code, folded.model, folded.initial_prompt) == ("en", "", "oi")
    plain = common_streaming_pb2.StreamingConfig(language_code="es")
    assert streaming_config(plain) is plain
    config.transcription.beam_size = 5
    with pytest.raises(InvalidInput, match="beam_size is for batch transcription only") as err:
        streaming_config(config)
    assert err.value.field == "config.transcription.beam_size"


def test_fan_out_moves_segment_messages_to_file_time():
    words = (Word(0.1, 0.4, "olá", 0.9), Word(0.5, 0.9, "mundo", 0.8))
    chunk_segment = convert.segment_to_proto(Segment(0, 0.1, 0.9, "olá mundo", words))
    moved = shift_segment(chunk_segment, 30.0, 7)
    back = convert.segment_from_proto(moved)
    assert (back.id, back.start, back.end, back.text) == (7, 30.1, 30.9, "olá mundo")
    assert [(w.start, w.end) for w in back.words] == [(30.1, 30.4), (30.5, 30.9)]
    assert convert.seconds(chunk_segment.start_offset) == pytest.approx(0.1)  # a copy


class RecordingStreaming(tr_grpc.TranscriptionServiceServicer):
    """A transcription service's streaming side that keeps the config it was sent."""

    def __init__(self):
        self.configs: list[common_streaming_pb2.StreamingConfig] = []

    def StreamingTranscribe(self, request_iterator, context):
        self.configs.extend(
            r.config for r in request_iterator if r.WhichOneof("payload") == "config"
        )
        summary = common_streaming_pb2.StreamingSummary(model="fake")
        yield tr_streaming_pb2.StreamingTranscribeResponse(
            event=common_streaming_pb2.StreamingEvent(summary=summary)
        )


@pytest.fixture()
def streaming_gateway():
    fake = RecordingStreaming()
    backend = build_server(
        ServerSettings(port=0),
        register=lambda server: tr_grpc.add_TranscriptionServiceServicer_to_server(fake, server),
        service_names=["asr.transcription.v1.TranscriptionService"],
    )
    handle = create_server(
        GatewaySettings(port=0, transcription_address=backend.address),
        stages_factory=FakeStages,
    )
    channel = channel_to(handle.port)
    yield gw_grpc.GatewayServiceStub(channel), fake
    channel.close()
    handle.stop(0)
    backend.stop(0)


def _stream(stub, config):
    requests = iter([gw_streaming_pb2.StreamingTranscribeRequest(config=config)])
    return list(stub.StreamingTranscribe(requests, timeout=30))


@pytest.mark.grpc
def test_the_gateway_folds_streaming_transcription_options_for_the_service(streaming_gateway):
    stub, fake = streaming_gateway
    shared = options_pb2.TranscriptionOptions(language_code="en", model="base")
    events = _stream(
        stub, common_streaming_pb2.StreamingConfig(language_code="es", transcription=shared)
    )
    assert events[-1].event.summary.model == "fake"
    (sent,) = fake.configs
    assert not sent.HasField("transcription") and (sent.language_code, sent.model) == ("en", "base")
    shared.quality_profile = quality_pb2.QUALITY_PROFILE_FAST
    with pytest.raises(grpc.RpcError) as err:
        _stream(stub, common_streaming_pb2.StreamingConfig(transcription=shared))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "quality_profile is for batch transcription only" in err.value.details()
    assert len(fake.configs) == 1  # refused before any call to the service
