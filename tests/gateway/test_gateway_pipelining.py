"""Stages that start before decoding ends: the gateway's chain over real in-process servers.

Preprocessing is the real service (ffmpeg) or a scripted one; transcription and diarization are
servers that record when each byte arrived, so the test sees the overlap itself.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from conftest import REPO

from asr.common.v1 import audio_pb2
from asr.diarization.v1 import diarization_service_pb2 as dia_pb
from asr.diarization.v1 import diarization_service_pb2_grpc as dia_grpc
from asr.preprocess.v1 import preprocess_service_pb2 as pre_pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pre_grpc
from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.errors import InvalidAudio
from asr_mesh.services.common.server import build_server
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.gateway.downstream import Deadlines, Downstream, GrpcStages
from asr_mesh.services.gateway.pipeline import ChainOptions, run_chain

pytestmark = pytest.mark.grpc


class Recording:
    """Reads a PCM request stream, noting the time of the first and last audio message."""

    def __init__(self):
        self.first = self.last = 0.0
        self.pcm = bytearray()
        self.config = None
        self.cancelled = threading.Event()

    def read(self, request_iterator, context):
        context.add_callback(self.cancelled.set)
        self.config = next(request_iterator).config
        for request in request_iterator:
            self.first = self.first or time.monotonic()
            self.last = time.monotonic()
            self.pcm += request.audio.pcm


class RecordingTranscription(tr_grpc.TranscriptionServiceServicer):
    def __init__(self):
        self.seen = Recording()

    def Transcribe(self, request_iterator, context):
        self.seen.read(request_iterator, context)
        yield tr_pb.TranscribeResponse(
            result=tr_pb.TranscriptionResult(language_code="pt-BR", model="base")
        )


class RecordingDiarization(dia_grpc.DiarizationServiceServicer):
    def __init__(self):
        self.seen = Recording()

    def Diarize(self, request_iterator, context):
        self.seen.read(request_iterator, context)
        yield dia_pb.DiarizeResponse(
            result=dia_pb.DiarizationResult(speaker_count=0, backend="recording")
        )


class BrokenPreprocess(pre_grpc.PreprocessServiceServicer):
    """Announces 60 s, sends 2 s of audio, then finds the file corrupt."""

    def Preprocess(self, request_iterator, context):
        for _ in request_iterator:
            pass
        yield pre_pb.PreprocessResponse(
            media_info=audio_pb2.MediaInfo(codec="flac", duration=convert.duration(60.0))
        )
        for _ in range(4):
            time.sleep(0.05)
            yield pre_pb.PreprocessResponse(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 8000))
        raise InvalidAudio("the file is corrupt after 2.0 s (invalid FLAC frame)")


def serve(servicer, register, name):
    return build_server(
        ServerSettings(port=0), register=lambda s: register(servicer, s), service_names=[name]
    )


class NoMerge:
    """The chain's merge step is not what these tests look at."""

    def __init__(self, stages):
        self._stages = stages

    def __getattr__(self, name):
        return getattr(self._stages, name)

    def merge(self, transcript, diarization, options, duration, trace_id):
        from asr_mesh.services.gateway.pipeline import Merged

        return Merged(transcript.segments, [], [])


@pytest.fixture()
def services():
    from asr_mesh.services.preprocess.server import PreprocessSettings
    from asr_mesh.services.preprocess.server import create_server as preprocess_server

    transcription, diarization = RecordingTranscription(), RecordingDiarization()
    handles = [
        preprocess_server(PreprocessSettings(port=0)),
        serve(
            transcription,
            tr_grpc.add_TranscriptionServiceServicer_to_server,
            "asr.transcription.v1.TranscriptionService",
        ),
        serve(
            diarization,
            dia_grpc.add_DiarizationServiceServicer_to_server,
            "asr.diarization.v1.DiarizationService",
        ),
    ]
    yield handles, transcription.seen, diarization.seen
    for handle in handles:
        handle.stop(0)


def test_transcription_and_diarization_read_the_audio_while_it_is_decoded(
    services, corpus, tmp_path
):
    (preprocess, transcription, diarization), heard, diarized = services
    upload = tmp_path / "long.flac"
    shutil.copy(corpus / "long" / "long.flac", upload)  # 10 min: decoding takes a moment
    downstream = Downstream(
        preprocess.address, transcription.address, diarization.address, "127.0.0.1:9"
    )
    events = []
    try:
        result = run_chain(
            upload,
            ChainOptions.of(filename="long.flac", diarize=True),
            NoMerge(GrpcStages(downstream, Deadlines())),
            lambda stage, event: events.append((time.monotonic(), stage, event)),
        )
    finally:
        downstream.close()
    decoded_at = next(
        t
        for t, stage, e in events
        if stage == "preprocess" and getattr(e, "message", "") == "decoded"
    )
    assert (
        heard.first < decoded_at and diarized.first < decoded_at
    )  # they started before decoding ended
    assert bytes(heard.pcm) == bytes(diarized.pcm) == bytes(result_pcm(result, upload))
    assert heard.config.pcm_size_bytes == 0  # still being decoded when the call began: not declared
    assert result.audio_duration == pytest.approx(602.2, abs=0.1)


def result_pcm(result, upload):
    [pcm_file] = upload.parent.glob("pcm-*.s16le")
    return pcm_file.read_bytes()


def test_decoding_that_fails_midway_reports_its_own_error_and_stops_the_branches(tmp_path):
    transcription, diarization = RecordingTranscription(), RecordingDiarization()
    handles = [
        serve(
            BrokenPreprocess(),
            pre_grpc.add_PreprocessServiceServicer_to_server,
            "asr.preprocess.v1.PreprocessService",
        ),
        serve(
            transcription,
            tr_grpc.add_TranscriptionServiceServicer_to_server,
            "asr.transcription.v1.TranscriptionService",
        ),
        serve(
            diarization,
            dia_grpc.add_DiarizationServiceServicer_to_server,
            "asr.diarization.v1.DiarizationService",
        ),
    ]
    upload = tmp_path / "bad.flac"
    upload.write_bytes(b"fLaC" + b"\0" * 100)
    addresses = [h.address for h in handles]
    downstream = Downstream(addresses[0], addresses[1], addresses[2], "127.0.0.1:9")
    try:
        with pytest.raises(InvalidAudio, match="corrupt after 2.0 s"):
            run_chain(
                upload,
                ChainOptions.of(filename="bad.flac", diarize=True),
                GrpcStages(downstream, Deadlines()),
                lambda stage, event: None,
            )
        assert transcription.seen.first  # it had started on the audio ...
        assert transcription.seen.cancelled.wait(5) and diarization.seen.cancelled.wait(
            5
        )  # ... and was stopped
    finally:
        downstream.close()
        for handle in handles:
            handle.stop(0)


def test_the_chain_module_stays_free_of_grpc():
    import subprocess
    import sys

    code = (
        "import sys; import asr_mesh.services.gateway.pipeline, "
        "asr_mesh.services.gateway.pcm_source; "
        "assert 'grpc' not in sys.modules, 'grpc imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        check=True,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'gen'}", "PATH": "/usr/bin:/bin"},
    )
