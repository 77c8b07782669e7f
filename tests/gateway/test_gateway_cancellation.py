"""A caller cancelling mid-request stops the downstream work (real gateway, real adapters)."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import channel_to

from asr.common.v1 import audio_pb2
from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.preprocess.v1 import preprocess_service_pb2 as pre_pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pre_grpc
from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from services.common.server import build_server
from services.common.settings import ServerSettings
from services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc


class OneSecondOfPcm(pre_grpc.PreprocessServiceServicer):
    def Preprocess(self, request_iterator, context):
        for _ in request_iterator:
            pass
        yield pre_pb.PreprocessResponse(media_info=audio_pb2.MediaInfo(codec="pcm_s16le"))
        yield pre_pb.PreprocessResponse(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 16000))
        yield pre_pb.PreprocessResponse(summary=pre_pb.PreprocessSummary(pcm_bytes=32000))


class EndlessTranscription(tr_grpc.TranscriptionServiceServicer):
    """Works until its caller goes away, and records that it noticed."""

    def __init__(self):
        self.started = threading.Event()
        self.abandoned = threading.Event()

    def Transcribe(self, request_iterator, context):
        finished = threading.Event()
        # gRPC stops resuming a cancelled call's generator, so learn of the end by callback.
        context.add_callback(lambda: None if finished.is_set() else self.abandoned.set())
        for _ in request_iterator:
            pass
        self.started.set()
        deadline = time.monotonic() + 60
        while context.is_active() and time.monotonic() < deadline:
            yield tr_pb.TranscribeResponse()  # progress-like keepalive
            time.sleep(0.05)
        finished.set()


def test_cancelling_the_gateway_call_cancels_the_transcription_call(tmp_path):
    transcription = EndlessTranscription()

    def register(server):
        pre_grpc.add_PreprocessServiceServicer_to_server(OneSecondOfPcm(), server)
        tr_grpc.add_TranscriptionServiceServicer_to_server(transcription, server)

    backends = build_server(ServerSettings(port=0), register=register,
                            service_names=["asr.preprocess.v1.PreprocessService"])
    spool = tmp_path / "spool"
    spool.mkdir()
    address = backends.address
    gateway = create_server(GatewaySettings(
        port=0, spool_dir=spool, preprocess_address=address, transcription_address=address,
        diarization_address=address, merge_address=address,
    ))
    channel = channel_to(gateway.port)
    try:
        def requests():
            yield pb.TranscribeRequest(config=pb.TranscribeConfig(filename="a.wav"))
            yield pb.TranscribeRequest(content=b"RIFF")

        call = pb_grpc.GatewayServiceStub(channel).Transcribe(requests(), timeout=60)
        assert transcription.started.wait(10)
        call.cancel()
        assert transcription.abandoned.wait(10), "the gateway kept the transcription call running"
        deadline = time.monotonic() + 10
        while list(spool.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(spool.iterdir()) == []
    finally:
        channel.close()
        gateway.stop(0)
        backends.stop(0)


class LateCancelContext:
    """A servicer context whose cancel notice lands a moment after the request stream ended.

    That is how gRPC's Python server may report a cancelled upload: the pending read completes
    empty (the iterator simply stops) and the cancel arrives on a separate completion. Over a
    real connection the order is a race; here it is the bad order every time.
    """

    def __init__(self):
        self.callbacks = []

    def add_callback(self, callback) -> bool:
        self.callbacks.append(callback)
        return True

    def time_remaining(self):
        return None

    def cancel_soon(self) -> None:
        threading.Timer(0.05, lambda: [callback() for callback in self.callbacks]).start()


def test_an_upload_cancelled_before_the_notice_arrives_is_never_transcribed(tmp_path):
    from fakes import FakeStages

    from services.common.errors import Cancelled
    from services.gateway.servicer import GatewayServicer

    stages, context = FakeStages(), LateCancelContext()
    servicer = GatewayServicer(lambda: stages, max_upload_bytes=10_000, spool_dir=tmp_path)

    def cancelled_upload():
        yield pb.TranscribeRequest(config=pb.TranscribeConfig(filename="x.wav", upload_size_bytes=1000))
        yield pb.TranscribeRequest(content=b"RIFF")
        context.cancel_soon()  # the stream ends here; the cancel notice is still on its way

    with pytest.raises(Cancelled):
        list(servicer.Transcribe(cancelled_upload(), context))
    assert stages.calls == []  # not decoded, not transcribed as a 4-byte file
    assert list(tmp_path.iterdir()) == []
