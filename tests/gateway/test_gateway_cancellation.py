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
from asr_mesh.services.common.server import build_server
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.gateway.server import GatewaySettings, create_server

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

    backends = build_server(
        ServerSettings(port=0),
        register=register,
        service_names=["asr.preprocess.v1.PreprocessService"],
    )
    spool = tmp_path / "spool"
    spool.mkdir()
    address = backends.address
    gateway = create_server(
        GatewaySettings(
            port=0,
            spool_dir=spool,
            preprocess_address=address,
            transcription_address=address,
            diarization_address=address,
            merge_address=address,
        )
    )
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


class FakeAioContext:
    """The few grpc.aio servicer-context methods the gateway asks before admission."""

    def time_remaining(self):
        return None

    def invocation_metadata(self):
        return ()

    def peer(self):
        return "ipv4:127.0.0.1:1"


async def _upload(declared: int, content: bytes):
    yield pb.TranscribeRequest(
        config=pb.TranscribeConfig(filename="x.wav", upload_size_bytes=declared)
    )
    yield pb.TranscribeRequest(content=content)


def test_an_upload_cancelled_just_after_its_stream_ended_is_never_transcribed(tmp_path):
    """On the event loop a cancel notice cancels the handler's task. A short upload waits a moment
    for one before it is judged, so a cancel landing just after the stream ended (gRPC may
    report a cancelled upload that way) still stops everything: nothing decoded, nothing spooled."""
    import asyncio

    from fakes import FakeStages

    from asr_mesh.services.gateway.servicer import GatewayServicer

    stages = FakeStages()
    servicer = GatewayServicer(lambda: stages, max_upload_bytes=10_000, spool_dir=tmp_path)

    async def scenario():
        async def consume():
            return [m async for m in servicer.Transcribe(_upload(1000, b"RIFF"), FakeAioContext())]

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.2)  # the stream has ended; the handler is judging the short upload
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    servicer.close()
    assert stages.calls == []  # not decoded, not transcribed as a 4-byte file
    assert list(tmp_path.iterdir()) == []


def test_a_cut_off_upload_nobody_cancelled_is_refused_naming_both_sizes(tmp_path, monkeypatch):
    import asyncio

    from fakes import FakeStages

    from asr_mesh.services.common.errors import InvalidInput
    from asr_mesh.services.gateway import servicer as module

    monkeypatch.setattr(module, "CANCEL_NOTICE_GRACE_S", 0.05)
    stages = FakeStages()
    servicer = module.GatewayServicer(lambda: stages, max_upload_bytes=10_000, spool_dir=tmp_path)

    async def scenario():
        return [m async for m in servicer.Transcribe(_upload(1000, b"RIFF"), FakeAioContext())]

    with pytest.raises(InvalidInput, match="4 of the 1000 bytes"):
        asyncio.run(scenario())
    servicer.close()
    assert stages.calls == []
    assert list(tmp_path.iterdir()) == []
