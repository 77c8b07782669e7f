"""The gateway's gRPC adapters against real in-process fake services."""

from __future__ import annotations

import grpc
import pytest

from asr.common.v1 import audio_pb2, progress_pb2
from asr.preprocess.v1 import preprocess_service_pb2 as pre_pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pre_grpc
from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common.domain_errors import Category
from asr_mesh.services.common.errors import DependencyFailed, InternalError, UploadStalled
from asr_mesh.services.common.server import build_server
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.gateway.availability import ServiceNotConfigured
from asr_mesh.services.gateway.downstream import Deadlines, Downstream, GrpcStages
from asr_mesh.services.gateway.pipeline import ChainOptions, Transcript

pytestmark = pytest.mark.grpc


class FlakyTranscription(tr_grpc.TranscriptionServiceServicer):
    """Fails its first `failures` calls with UNAVAILABLE, optionally after sending progress."""

    def __init__(self, failures: int, progress_first: bool):
        self.failures, self.progress_first, self.calls = failures, progress_first, 0

    def Transcribe(self, request_iterator, context):
        self.calls += 1
        self.config = next(request_iterator).config
        for _ in request_iterator:
            pass
        if self.calls <= self.failures:
            if self.progress_first:
                yield tr_pb.TranscribeResponse(progress=progress_pb2.Progress(fraction=0.5))
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica went away")
        yield tr_pb.TranscribeResponse(
            result=tr_pb.TranscriptionResult(language_code="pt-BR", model="base")
        )


class FakePreprocess(pre_grpc.PreprocessServiceServicer):
    """Sends 3000 PCM bytes; its summary can lie about them or be left out."""

    def __init__(self, announced: int | None = 3000):
        self.announced, self.config = announced, None

    def Preprocess(self, request_iterator, context):
        self.config = next(request_iterator).config
        for _ in request_iterator:
            pass
        yield pre_pb.PreprocessResponse(media_info=audio_pb2.MediaInfo(codec="flac"))
        for piece in (b"\x01\x00" * 1000, b"\x02\x00" * 500):
            yield pre_pb.PreprocessResponse(audio=audio_pb2.AudioChunk(pcm=piece))
        if self.announced is not None:
            yield pre_pb.PreprocessResponse(
                summary=pre_pb.PreprocessSummary(pcm_bytes=self.announced)
            )


def serve(servicer, register, name):
    return build_server(
        ServerSettings(port=0), register=lambda s: register(servicer, s), service_names=[name]
    )


def stages_for(port: int) -> GrpcStages:
    address = f"127.0.0.1:{port}"
    return GrpcStages(Downstream(address, address, address, address), Deadlines())


@pytest.mark.parametrize(
    ("progress_first", "succeeds", "calls"),
    [
        (False, True, 2),  # refused before answering: safe to replay on another attempt
        (True, False, 1),
    ],  # died mid-stream: not replayed, and reported as not retryable
)
def test_streams_are_retried_only_before_any_response(progress_first, succeeds, calls):
    servicer = FlakyTranscription(failures=1, progress_first=progress_first)
    handle = serve(
        servicer,
        tr_grpc.add_TranscriptionServiceServicer_to_server,
        "asr.transcription.v1.TranscriptionService",
    )
    try:
        stages = stages_for(handle.port)
        if succeeds:
            assert stages.transcribe(b"\0\0" * 1600, ChainOptions(), lambda e: None).model == "base"
        else:  # not UNAVAILABLE either: that would invite the caller to replay it
            with pytest.raises(
                DependencyFailed, match="transcription service failed while working"
            ):
                stages.transcribe(b"\0\0" * 1600, ChainOptions(), lambda e: None)
        assert servicer.calls == calls
        assert servicer.config.pcm_size_bytes == 3200  # declared, so a cut-off stream is refused
    finally:
        handle.stop(0)


def test_decoded_pcm_is_mapped_from_the_spool_not_copied(tmp_path):
    handle = serve(
        FakePreprocess(),
        pre_grpc.add_PreprocessServiceServicer_to_server,
        "asr.preprocess.v1.PreprocessService",
    )
    upload = tmp_path / "upload"
    upload.write_bytes(b"RIFF")
    try:
        events = []
        decoded = stages_for(handle.port).preprocess(upload, ChainOptions(), events.append)
    finally:
        handle.stop(0)
    assert isinstance(decoded.pcm, memoryview)
    assert bytes(decoded.pcm) == b"\x01\x00" * 1000 + b"\x02\x00" * 500
    [pcm_file] = tmp_path.glob("pcm-*.s16le")
    assert pcm_file.stat().st_size == 3000
    assert decoded.duration == pytest.approx(1500 / 16000)
    assert events[0].codec == "flac"


@pytest.mark.parametrize(
    ("announced", "needle"),
    [
        (4000, "the preprocess service announced 4000 PCM bytes but sent 3000"),
        (None, "the preprocess service closed its stream without a result"),
    ],
)
def test_decoded_audio_must_match_the_preprocess_summary(tmp_path, announced, needle):
    servicer = FakePreprocess(announced)
    handle = serve(
        servicer,
        pre_grpc.add_PreprocessServiceServicer_to_server,
        "asr.preprocess.v1.PreprocessService",
    )
    upload = tmp_path / "upload"
    upload.write_bytes(b"RIFF" * 10)
    try:
        with pytest.raises(InternalError, match=needle):
            stages_for(handle.port).preprocess(upload, ChainOptions(), lambda e: None)
    finally:
        handle.stop(0)
    assert servicer.config.upload_size_bytes == 40


class StalledTranscription(tr_grpc.TranscriptionServiceServicer):
    """Answers as a transcription service whose idle guard gave up on its caller's upload."""

    def Transcribe(self, request_iterator, context):
        next(request_iterator)
        raise UploadStalled("the request stream stalled: no message arrived for 60 s (X)")
        yield  # pragma: no cover - a generator, as the servicer contract has it


def test_a_downstream_upload_stall_is_the_gateways_failure_not_the_callers():
    handle = serve(
        StalledTranscription(),
        tr_grpc.add_TranscriptionServiceServicer_to_server,
        "asr.transcription.v1.TranscriptionService",
    )
    try:
        with pytest.raises(
            DependencyFailed, match="transcription service gave up waiting for the gateway"
        ):
            stages_for(handle.port).transcribe(b"\0\0" * 1600, ChainOptions(), lambda e: None)
    finally:
        handle.stop(0)


@pytest.mark.parametrize("service", ["preprocess", "transcription", "diarization", "merge"])
def test_a_service_without_an_address_is_refused_in_one_sentence(service, tmp_path):
    # An empty address is a backend this gateway does not have: the stage says so
    # (FAILED_PRECONDITION) instead of failing on the missing stub as an internal error.
    addresses = dict.fromkeys(("preprocess", "transcription", "diarization", "merge"), "")
    downstream = Downstream(**addresses)
    stages = GrpcStages(downstream, Deadlines())
    upload = tmp_path / "talk.wav"
    upload.write_bytes(b"RIFF")
    pcm = b"\0\0" * 1600
    run = {
        "preprocess": lambda: stages.preprocess(upload, ChainOptions(), lambda e: None),
        "transcription": lambda: stages.transcribe(pcm, ChainOptions(), lambda e: None),
        "diarization": lambda: stages.diarize(pcm, ChainOptions(), lambda e: None),
        "merge": lambda: stages.merge(
            Transcript([], "pt-BR", "base"), None, ChainOptions(), 0.1, ""
        ),
    }
    try:
        with pytest.raises(ServiceNotConfigured, match=f"has no {service} service") as caught:
            run[service]()
        assert caught.value.category is Category.FAILED_PRECONDITION
        assert caught.value.metadata == {"service": service}
    finally:
        downstream.close()
