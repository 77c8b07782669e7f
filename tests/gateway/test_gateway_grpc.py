"""The gateway servicer on a real in-process server, downstream replaced by fakes."""

from __future__ import annotations

import grpc
import pytest
from conftest import channel_to
from fakes import FakeStages

from asr.common.v1 import document_pb2
from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import streams
from asr_mesh.services.common.errors import DependencyUnavailable, InvalidAudio
from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc


@pytest.fixture()
def gateway(tmp_path):
    holder = {"stages": FakeStages()}
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = GatewaySettings(port=0, spool_dir=spool, max_upload_bytes=1000)
    handle = create_server(settings, stages_factory=lambda: holder["stages"])
    holder["address"] = handle.address
    channel = channel_to(handle.port)
    yield pb_grpc.GatewayServiceStub(channel), holder, spool
    channel.close()
    handle.stop(0)


def call(stub, content: bytes, **config):
    def requests():
        yield pb.TranscribeRequest(config=pb.TranscribeConfig(filename="x.wav", **config))
        if content:
            yield pb.TranscribeRequest(content=content)

    return list(stub.Transcribe(requests(), timeout=20))


def test_streams_media_progress_then_result(gateway):
    stub, _, spool = gateway
    responses = call(
        stub,
        b"RIFFdata",
        diarize=True,
        output_formats=[document_pb2.OUTPUT_FORMAT_SRT, document_pb2.OUTPUT_FORMAT_JSON],
    )
    kinds = [r.WhichOneof("payload") for r in responses]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    assert "media_info" in kinds and "progress" in kinds
    # The transcript streams before the summary: segments, then documents in pieces.
    assert kinds[-4:] == ["segment", "document_chunk", "document_chunk", "result"]
    chunks = [r.document_chunk for r in responses if r.WhichOneof("payload") == "document_chunk"]
    assert [c.file_extension for c in chunks] == ["srt", "json"] and all(c.last for c in chunks)
    result = responses[-1].result
    assert (result.segment_count, result.document_count) == (1, 2)
    assert result.speakers == ["SPEAKER_00"] and result.diarization_backend == "fake"
    assert list(spool.iterdir()) == []  # spooled upload removed


def test_stage_error_reaches_caller_with_its_sentence(gateway):
    stub, holder, spool = gateway
    holder["stages"] = FakeStages(fail={"preprocess": InvalidAudio("the file is empty")})
    with pytest.raises(grpc.RpcError) as err:
        call(stub, b"x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "the file is empty"
    assert list(spool.iterdir()) == []


def test_unavailable_dependency_is_unavailable(gateway):
    stub, holder, _ = gateway
    holder["stages"] = FakeStages(
        fail={"transcription": DependencyUnavailable("transcription service is unavailable")}
    )
    with pytest.raises(grpc.RpcError) as err:
        call(stub, b"x")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("content", "config", "needle"),
    [
        (b"", {}, "upload is empty"),
        (b"x" * 2000, {}, "limit of 1000 bytes"),
        (
            b"x",
            {"diarize": True, "min_speakers": 3, "max_speakers": 2},
            "min_speakers (3) is larger",
        ),
        (b"x", {"num_speakers": 2}, "diarize=true is needed for num_speakers"),
        (
            b"x",
            {"output_formats": [document_pb2.OUTPUT_FORMAT_RTTM]},
            "diarize=true is needed for RTTM output",
        ),
        (b"x", {"output_formats": [document_pb2.OUTPUT_FORMAT_UNSPECIFIED]}, "output format"),
        (b"x" * 10, {"upload_size_bytes": 20}, "upload ended after 10 of the 20 bytes declared"),
        (b"x" * 30, {"upload_size_bytes": 20}, "upload is longer than the 20 bytes declared"),
        (b"x", {"upload_size_bytes": -1}, "config.upload_size_bytes must not be negative"),
    ],
)
def test_bad_requests_are_invalid_argument(gateway, content, config, needle):
    stub, _, spool = gateway
    with pytest.raises(grpc.RpcError) as err:
        call(stub, content, **config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    assert list(spool.iterdir()) == []


def test_internal_errors_hide_the_traceback(gateway):
    stub, holder, _ = gateway
    holder["stages"] = FakeStages(fail={"merge": ZeroDivisionError("secret detail")})
    with pytest.raises(grpc.RpcError) as err:
        call(stub, b"x")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details() and "Traceback" not in err.value.details()


def test_a_declared_size_over_the_limit_is_refused_before_any_byte_is_sent(gateway):
    import threading

    stub, _, spool = gateway
    sent, go_on = [], threading.Event()

    def requests():
        yield pb.TranscribeRequest(
            config=pb.TranscribeConfig(filename="x.wav", upload_size_bytes=5000)
        )
        go_on.wait(10)  # the file would follow only if the gateway kept reading
        sent.append("content")
        yield pb.TranscribeRequest(content=b"x" * 5000)

    try:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Transcribe(requests(), timeout=20))
        content_sent = list(sent)
    finally:
        go_on.set()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than the limit of 1000 bytes" in err.value.details()
    assert content_sent == [] and list(spool.iterdir()) == []


def test_upload_of_the_declared_size_is_transcribed_whole(gateway):
    stub, holder, _ = gateway
    responses = call(stub, b"RIFF" * 100, upload_size_bytes=400)
    assert responses[-1].WhichOneof("payload") == "result"
    media = next(r.media_info for r in responses if r.WhichOneof("payload") == "media_info")
    assert media.size_bytes == 400 and holder["stages"].calls[0] == "preprocess"


def test_caller_cancelling_mid_upload_is_cancelled_and_nothing_runs(gateway, monkeypatch):
    """A cancelled upload is CANCELLED, never INTERNAL, and never transcribed as a short file.

    Over a real connection gRPC decides the order of "stream ended" and "cancelled" (the request
    iterator of a cancelled upload sometimes simply ends, as a finished one does, while the call
    still looks active); this checks the status, metrics and cleanup, and
    test_gateway_cancellation forces the bad order every time.
    """
    import threading
    import time

    from asr_mesh.services.common.metrics import REGISTRY

    stub, holder, spool = gateway
    # A real cancel ends the wait the moment its notice lands; the long grace only keeps a
    # runner that freezes for a while from turning the late notice into INVALID_ARGUMENT.
    monkeypatch.setattr(streams, "CANCEL_NOTICE_GRACE_S", 10.0)

    def count(code):
        labels = {"service": "gateway", "method": "Transcribe", "code": code}
        return REGISTRY.get_sample_value("asr_grpc_server_requests_total", labels) or 0

    before = {code: count(code) for code in ("INTERNAL", "CANCELLED", "INVALID_ARGUMENT", "OK")}
    release = threading.Event()

    def requests():
        yield pb.TranscribeRequest(
            config=pb.TranscribeConfig(filename="x.wav", upload_size_bytes=500)
        )
        yield pb.TranscribeRequest(content=b"RIFF")
        release.wait(10)  # the upload stalls; the caller gives up

    call = stub.Transcribe(requests(), timeout=20)
    started = time.monotonic() + 10
    while not any(spool.iterdir()) and time.monotonic() < started:  # the handler is spooling
        time.sleep(0.02)
    assert any(spool.iterdir())
    call.cancel()
    release.set()
    deadline = time.monotonic() + 10
    while count("CANCELLED") == before["CANCELLED"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {code: count(code) - was for code, was in before.items()} == {
        "INTERNAL": 0,
        "CANCELLED": 1,
        "INVALID_ARGUMENT": 0,
        "OK": 0,
    }
    assert holder["stages"].calls == []  # nothing was decoded or transcribed
    assert list(spool.iterdir()) == []


def test_large_documents_stream_in_pieces_and_the_sdk_reassembles_them(gateway, tmp_path):
    from asr_mesh.client.sdk import GatewayClient, TranscribeOptions

    _, holder, _ = gateway
    holder["stages"] = FakeStages(document_chars=3_000_000)  # ~3.6 MB of UTF-8 per document
    upload = tmp_path / "x.wav"
    upload.write_bytes(b"x" * 100)
    # gRPC's default 4 MiB receive limit, as a third-party client would have: no message of the
    # stream may grow with the transcript.
    with GatewayClient(holder["address"], max_message_bytes=4 << 20) as client:
        result = client.transcribe(upload, TranscribeOptions(formats=("json", "srt")))
    assert [d.file_extension for d in result.documents] == ["json", "srt"]
    for document in result.documents:
        assert document.content == f"{document.file_extension}:" + "ação " * 600_000
    assert [s.text for s in result.segments] == ["olá mundo"] and result.segment_count == 1


@pytest.mark.parametrize(("profile", "name"), [(0, ""), (1, "max_quality"), (3, "fast")])
def test_quality_profile_reaches_the_chain_as_sent(gateway, profile, name):
    from asr_mesh.services.common.options import PROFILE_NAMES

    stub, holder, _ = gateway
    call(stub, b"x", quality_profile=profile)
    chosen = holder["stages"].options.recognition.transcription.quality_profile
    assert chosen == profile and PROFILE_NAMES[chosen] == name


def test_unknown_quality_profile_is_invalid_argument(gateway):
    stub, _, _ = gateway
    with pytest.raises(grpc.RpcError) as err:
        call(stub, b"x", quality_profile=42)
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "quality profile" in err.value.details()
    )
