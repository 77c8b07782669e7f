"""Back-pressure and readiness on a real in-process server with a fake (slow) model."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import grpc
import pytest
from conftest import channel_to, spy_calls
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asr.common.v1 import audio_pb2
from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import metrics
from asr_mesh.services.common.errors import Overloaded, from_rpc_error
from asr_mesh.services.common.scheduler import WorkQueue
from asr_mesh.services.transcription import servicer as servicer_module
from asr_mesh.services.transcription.core import Transcriber
from asr_mesh.services.transcription.models import ModelRegistry
from asr_mesh.services.transcription.server import TranscriptionSettings, create_server

pytestmark = pytest.mark.grpc

PCM16K = audio_pb2.PcmFormat(
    sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)


class SlowModel:
    supported_languages = ["pt"]

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def transcribe(self, audio, **kw):
        self.calls += 1
        info = SimpleNamespace(language="pt", language_probability=1.0)
        if len(audio) > 16000 * 2:  # a real request (warm-up uses one second)
            self.release.wait(10)
        return iter([]), info


@pytest.fixture()
def slow_server(tmp_path):
    (tmp_path / "whisper-base").mkdir()
    (tmp_path / "whisper-base" / "model.bin").write_bytes(b"x")
    model = SlowModel()
    queue = WorkQueue(
        workers=1,
        max_queued=1,
        on_change=lambda waiting, running: metrics.QUEUE_DEPTH.labels("transcription").set(waiting),
    )
    transcriber = Transcriber(
        ModelRegistry(tmp_path, "base", loader=lambda *a: model), "cpu", "int8", queue=queue
    )
    handle = create_server(
        TranscriptionSettings(port=0, models_dir=tmp_path), transcriber=transcriber
    )
    channel = channel_to(handle.port)
    yield SimpleNamespace(
        stub=pb_grpc.TranscriptionServiceStub(channel),
        model=model,
        queue=queue,
        health=health_pb2_grpc.HealthStub(channel),
    )
    model.release.set()
    channel.close()
    handle.stop(0)


def call(stub):
    def requests():
        yield pb.TranscribeRequest(config=pb.TranscriptionConfig(format=PCM16K))
        yield pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 16000 * 3))

    return list(stub.Transcribe(requests(), timeout=20))


def test_preloaded_and_warmed_before_serving(slow_server):
    assert slow_server.model.calls == 1  # warm-up ran before the server said SERVING
    status = slow_server.health.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_a_full_queue_answers_resource_exhausted_with_retry_after(slow_server):
    threads = [threading.Thread(target=call, args=(slow_server.stub,)) for _ in range(2)]
    for thread in threads:  # one runs, one waits in the queue
        thread.start()
    # The gauge, not queue.waiting: it is updated a statement after the queue changes.
    assert wait_until(
        lambda: (
            metrics.REGISTRY.get_sample_value("asr_queue_depth", {"service": "transcription"}) == 1
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        call(slow_server.stub)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = from_rpc_error(err.value)
    assert isinstance(error, Overloaded) and error.retry_after_s >= 1.0
    slow_server.model.release.set()
    for thread in threads:
        thread.join(10)
    assert metrics.REGISTRY.get_sample_value("asr_queue_depth", {"service": "transcription"}) == 0


# -- admission before the upload, cancellation and deadlines in the queue ----------------------


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def occupy(server, *, queued: int) -> list[threading.Thread]:
    """One call running on the (blocked) model and `queued` calls waiting behind it."""
    threads = [threading.Thread(target=call, args=(server.stub,)) for _ in range(1 + queued)]
    threads[0].start()
    assert wait_until(lambda: server.queue.running == 1)
    for thread in threads[1:]:
        thread.start()
    assert wait_until(lambda: server.queue.waiting == queued)
    return threads


def test_a_full_queue_refuses_before_reading_the_upload(slow_server, monkeypatch):
    threads = occupy(slow_server, queued=1)
    # Counted on the server: the client only sends audio after `more` is set.
    audio_reads = spy_calls(monkeypatch, servicer_module, "read_pcm")
    consumed, more = [], threading.Event()

    def upload():
        consumed.append("config")
        yield pb.TranscribeRequest(config=pb.TranscriptionConfig(format=PCM16K))
        more.wait(15)  # the audio follows only if the server reads on
        consumed.append("audio")
        yield pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 16000 * 3))

    try:
        with pytest.raises(grpc.RpcError) as err:
            list(slow_server.stub.Transcribe(upload(), timeout=5))
        read, audio_read = list(consumed), list(audio_reads)  # before queued calls move on
    finally:
        more.set()
        slow_server.model.release.set()
        for thread in threads:
            thread.join(10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert read == ["config"]
    assert audio_read == [], "the server started reading audio it was going to refuse"


def test_bad_options_are_refused_before_queueing(slow_server):
    threads = occupy(slow_server, queued=1)
    try:
        requests = iter(
            [pb.TranscribeRequest(config=pb.TranscriptionConfig(format=PCM16K, model="large-v9"))]
        )
        with pytest.raises(grpc.RpcError) as err:
            list(slow_server.stub.Transcribe(requests, timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED
    finally:
        slow_server.model.release.set()
        for thread in threads:
            thread.join(10)


def test_a_cancelled_call_leaves_the_queue(slow_server):
    threads = occupy(slow_server, queued=0)
    try:
        waiting = slow_server.stub.Transcribe(
            iter(
                [
                    pb.TranscribeRequest(config=pb.TranscriptionConfig(format=PCM16K)),
                    pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 16000 * 3)),
                ]
            ),
            timeout=30,
        )
        assert wait_until(lambda: slow_server.queue.waiting == 1)
        waiting.cancel()
        assert wait_until(lambda: slow_server.queue.waiting == 0, timeout=3), (
            "a cancelled call kept its place in the queue"
        )
        assert slow_server.queue.running == 1  # the running call is untouched
        assert wait_until(
            lambda: (
                metrics.REGISTRY.get_sample_value("asr_queue_depth", {"service": "transcription"})
                == 0
            )
        )
    finally:
        slow_server.model.release.set()
        for thread in threads:
            thread.join(10)


def test_a_deadline_passing_in_the_queue_is_deadline_exceeded_and_frees_the_place(slow_server):
    threads = occupy(slow_server, queued=0)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            call_with_timeout(slow_server.stub, 1.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: slow_server.queue.waiting == 0, timeout=3), (
            "a call past its deadline kept its place in the queue"
        )
        assert time.monotonic() - started < 4 and slow_server.queue.running == 1
    finally:
        slow_server.model.release.set()
        for thread in threads:
            thread.join(10)


def test_the_wait_in_the_queue_is_reported(slow_server):
    threads = occupy(slow_server, queued=0)
    results = []
    waiter = threading.Thread(target=lambda: results.extend(call(slow_server.stub)))
    waiter.start()
    assert wait_until(lambda: slow_server.queue.waiting == 1)
    time.sleep(0.3)
    slow_server.model.release.set()
    for thread in [*threads, waiter]:
        thread.join(10)
    result = next(r.result for r in results if r.WhichOneof("payload") == "result")
    assert result.queue_wait.ToNanoseconds() >= 300_000_000


def call_with_timeout(stub, timeout: float):
    def requests():
        yield pb.TranscribeRequest(config=pb.TranscriptionConfig(format=PCM16K))
        yield pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 16000 * 3))

    return list(stub.Transcribe(requests(), timeout=timeout))


# -- server faults ---------------------------------------------------------------------------


def test_list_models_without_the_default_model_is_a_server_fault(tmp_path):
    (tmp_path / "whisper-small").mkdir()
    (tmp_path / "whisper-small" / "model.bin").write_bytes(b"x")
    transcriber = Transcriber(
        ModelRegistry(tmp_path, "base", loader=lambda *a: SlowModel()), "cpu", "int8"
    )
    handle = create_server(
        TranscriptionSettings(port=0, models_dir=tmp_path, preload=False), transcriber=transcriber
    )
    try:
        with channel_to(handle.port) as channel, pytest.raises(grpc.RpcError) as err:
            pb_grpc.TranscriptionServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    finally:
        handle.stop(0)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "default model 'base' is not in its models directory" in err.value.details()


def test_a_failed_warm_up_stops_the_started_server(tmp_path, monkeypatch):
    from asr_mesh.services.transcription import server as server_module

    (tmp_path / "whisper-base").mkdir()
    (tmp_path / "whisper-base" / "model.bin").write_bytes(b"x")

    def broken_loader(*args):
        raise OSError("model.bin is truncated")

    started = []
    real_build = server_module.build_server
    monkeypatch.setattr(
        server_module,
        "build_server",
        lambda *a, **kw: started.append(real_build(*a, **kw)) or started[-1],
    )
    transcriber = Transcriber(ModelRegistry(tmp_path, "base", loader=broken_loader), "cpu", "int8")
    with pytest.raises(OSError, match="truncated"):
        create_server(TranscriptionSettings(port=0, models_dir=tmp_path), transcriber=transcriber)
    assert len(started) == 1
    with channel_to(started[0].port) as channel, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
