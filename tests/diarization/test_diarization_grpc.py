"""A real diarization server in process: the wire contract, errors and the default backend."""

# Fixtures are imported from diarization_helpers, so their parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import channel_to
from diarization_helpers import check_well_formed, conversations, der, encoder_backend  # noqa: F401
from pyannote.core import Annotation, Segment

from asr.common.v1 import audio_pb2
from asr.diarization.v1 import diarization_service_pb2 as pb
from asr.diarization.v1 import diarization_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.pcm import chunked
from asr_mesh.services.diarization.core import Diarizer
from asr_mesh.services.diarization.server import DiarizationSettings, create_server

pytestmark = pytest.mark.grpc


class TwoTurns:
    """Backend stand-in: two speakers, one second each (the wire is under test, not models)."""

    name = "two-turns"

    def annotate(self, audio, min_speakers, max_speakers, progress):
        progress(0.5, "thinking")
        annotation = Annotation()
        annotation[Segment(0.0, 1.0)] = "a"
        annotation[Segment(0.8, 2.0)] = "b"
        return annotation


def to_pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()


def requests(pcm: bytes, rate: int = 16_000, **counts):
    yield pb.DiarizeRequest(
        config=pb.DiarizationConfig(
            format=audio_pb2.PcmFormat(sample_rate_hz=rate, channels=1), **counts
        )
    )
    for chunk in chunked(pcm):
        yield pb.DiarizeRequest(audio=audio_pb2.AudioChunk(pcm=chunk))


def diarize(port: int, stream):
    with channel_to(port) as channel:
        responses = list(pb_grpc.DiarizationServiceStub(channel).Diarize(stream, timeout=120))
    assert responses and responses[-1].WhichOneof("payload") == "result"
    assert all(r.WhichOneof("payload") == "progress" for r in responses[:-1])
    return [r.progress for r in responses[:-1]], responses[-1].result


@pytest.fixture()
def fake_server(state_dir):
    handle = create_server(DiarizationSettings(port=0), Diarizer(TwoTurns(), max_speakers=4))
    yield handle
    handle.stop(0)


def test_result_and_progress_on_the_wire(fake_server):
    progress, result = diarize(fake_server.port, requests(to_pcm(np.zeros(48_000, np.float32))))
    assert progress[0].fraction == 0.0 and progress[-1].fraction == 1.0
    assert any(p.message == "thinking" for p in progress)
    assert result.backend == "two-turns" and result.speaker_count == 2
    assert [
        (t.speaker, convert.seconds(t.start_offset), convert.seconds(t.end_offset))
        for t in result.exclusive_turns
    ] == [("SPEAKER_00", 0.0, 1.0), ("SPEAKER_01", 1.0, 2.0)]
    assert [
        (convert.seconds(r.start_offset), convert.seconds(r.end_offset)) for r in result.overlaps
    ] == [(0.8, 1.0)]
    assert convert.seconds(result.audio_duration) == pytest.approx(3.0)


class Endless:
    """Backend stand-in that works batch after batch until the service tells it to stop."""

    name = "endless"

    def __init__(self):
        import threading

        self.started = threading.Event()
        self.stopped = threading.Event()

    def annotate(self, audio, min_speakers, max_speakers, progress):
        import time

        self.started.set()
        try:
            while (
                True
            ):  # no new progress: the stream has nothing to send, only the callback stops it
                progress(0.0, "")
                time.sleep(0.005)
        finally:
            self.stopped.set()


def test_a_cancelled_call_stops_the_worker(state_dir):
    backend = Endless()
    handle = create_server(DiarizationSettings(port=0), Diarizer(backend))
    try:
        with channel_to(handle.port) as channel:
            call = pb_grpc.DiarizationServiceStub(channel).Diarize(
                requests(to_pcm(np.zeros(16_000, np.float32))), timeout=30
            )
            next(call)  # the first progress message: the work has begun
            assert backend.started.wait(5)
            call.cancel()
            assert backend.stopped.wait(5), "the worker kept going after the caller cancelled"
    finally:
        handle.stop(0)


def bad_call(port: int, stream) -> grpc.RpcError:
    with channel_to(port) as channel, pytest.raises(grpc.RpcError) as caught:
        list(pb_grpc.DiarizationServiceStub(channel).Diarize(stream, timeout=30))
    return caught.value


def test_wrong_sample_rate_is_invalid_argument(fake_server):
    err = bad_call(fake_server.port, requests(b"\0\0" * 800, rate=8_000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "16000 Hz" in err.details() and "8000 Hz" in err.details()


def test_missing_config_is_invalid_argument(fake_server):
    err = bad_call(
        fake_server.port, iter([pb.DiarizeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0"))])
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message" in err.details()


def test_odd_byte_count_and_impossible_counts_are_invalid_argument(fake_server):
    err = bad_call(fake_server.port, requests(b"\0\0\0"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "odd byte count" in err.details()
    err = bad_call(fake_server.port, requests(b"\0\0", min_speakers=3, max_speakers=2))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_speakers" in err.details()
    err = bad_call(fake_server.port, requests(b"\0\0", num_speakers=9))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit of 4" in err.details()


def test_pcm_stream_of_another_size_than_declared_is_refused(fake_server):
    err = bad_call(fake_server.port, requests(b"\0\0" * 800, pcm_size_bytes=3200))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ended after 1600 of the 3200 bytes declared in config.pcm_size_bytes" in err.details()
    _, result = diarize(fake_server.port, requests(b"\0\0" * 1600, pcm_size_bytes=3200))
    assert result.backend == "two-turns"


@pytest.fixture(scope="module")
def real_server(encoder_backend):
    handle = create_server(DiarizationSettings(port=0), Diarizer(encoder_backend))
    yield handle
    handle.stop(0)


@pytest.mark.models
def test_silence_gives_zero_turns(real_server):
    _, result = diarize(real_server.port, requests(bytes(10 * 32_000)))
    assert result.backend == "embedding-clustering"
    assert len(result.exclusive_turns) == 0 and result.speaker_count == 0
    assert convert.seconds(result.audio_duration) == pytest.approx(10.0)


@pytest.mark.models
def test_conversation_through_the_service(encoder_backend, conversations, state_dir):
    from asr_mesh.services.diarization.embedding import (
        EmbeddingBackendOptions,
        EmbeddingClusteringBackend,
    )

    # corpus-dev's references count each utterance's quiet onset and release: widen turns as
    # that convention needs (the default, 0, suits speech-only references).
    backend = EmbeddingClusteringBackend(
        embedder=encoder_backend.embedder, options=EmbeddingBackendOptions(turn_extension=0.45)
    )
    handle = create_server(DiarizationSettings(port=0), Diarizer(backend))
    try:
        name, audio, reference, speakers = conversations[0]
        progress, result = diarize(handle.port, requests(to_pcm(audio)))
    finally:
        handle.stop(0)
    turns = [convert.turn_from_proto(t) for t in result.exclusive_turns]
    check_well_formed(turns, len(audio) / 16_000)
    assert result.speaker_count == speakers
    assert der(reference, turns) <= 0.05
    assert convert.seconds(result.processing_duration) > 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(port: int, name: str, **labels: str) -> float:
    """One sample of the server's /metrics page (0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_the_servers_diarizer_reports_its_work_to_the_metrics(state_dir):
    """The core only calls `on_work`; the server wires it to the real-time-factor metrics."""
    from asr_mesh.services.diarization.server import build_diarizer

    settings = DiarizationSettings(port=0, metrics_port=_free_port(), max_speakers=4)
    handle = create_server(settings, build_diarizer(settings, TwoTurns()))
    try:
        before = {
            name: _scrape(handle.metrics_port, name, service="diarization")
            for name in ("asr_audio_processed_seconds_total", "asr_real_time_factor_count")
        }
        diarize(handle.port, requests(to_pcm(np.zeros(48_000, np.float32))))
        after = {name: _scrape(handle.metrics_port, name, service="diarization") for name in before}
    finally:
        handle.stop(0)
    assert after["asr_audio_processed_seconds_total"] - before[
        "asr_audio_processed_seconds_total"
    ] == pytest.approx(3.0)
    assert after["asr_real_time_factor_count"] - before["asr_real_time_factor_count"] == 1


@pytest.mark.models
def test_the_default_backend_reports_its_model_and_encoder_batches(conversations, state_dir):
    from asr_mesh.services.common.metrics import REGISTRY

    batches = REGISTRY.get_sample_value("asr_batch_size_count", {"service": "diarization"}) or 0.0
    settings = DiarizationSettings(port=0, metrics_port=_free_port(), torch_threads=2)
    handle = create_server(settings)  # the configured (embedding-clustering) backend
    try:
        _, audio, _, _ = conversations[0]
        _, result = diarize(handle.port, requests(to_pcm(audio)))
        port = handle.metrics_port
        loaded = _scrape(
            port, "asr_model_loaded", service="diarization", model="resemblyzer-ge2e", device="cpu"
        )
        batches_after = _scrape(port, "asr_batch_size_count", service="diarization")
        audio_s = _scrape(port, "asr_audio_processed_seconds_total", service="diarization")
    finally:
        handle.stop(0)
    assert result.backend == "embedding-clustering"
    assert loaded == 1
    assert batches_after >= batches + 2, "the warm-up batch and at least one of the conversation"
    assert audio_s >= len(audio) / 16_000
