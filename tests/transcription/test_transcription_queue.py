"""Back-pressure and readiness on a real in-process server with a fake (slow) model."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import grpc
import pytest
from conftest import channel_to
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asr.common.v1 import audio_pb2
from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from services.common import metrics
from services.common.errors import Overloaded, from_rpc_error
from services.transcription.core import Transcriber
from services.transcription.models import ModelRegistry
from services.transcription.scheduler import WorkQueue
from services.transcription.server import TranscriptionSettings, create_server

pytestmark = pytest.mark.grpc

PCM16K = audio_pb2.PcmFormat(sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE)


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
    queue = WorkQueue(workers=1, max_queued=1,
                      on_change=lambda waiting, running: metrics.QUEUE_DEPTH.labels("transcription").set(waiting))
    transcriber = Transcriber(ModelRegistry(tmp_path, "base", loader=lambda *a: model), "cpu", "int8", queue=queue)
    handle = create_server(TranscriptionSettings(port=0, models_dir=tmp_path), transcriber=transcriber)
    channel = channel_to(handle.port)
    yield SimpleNamespace(stub=pb_grpc.TranscriptionServiceStub(channel), model=model, queue=queue,
                          health=health_pb2_grpc.HealthStub(channel))
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
    deadline = time.monotonic() + 10
    while slow_server.queue.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metrics.REGISTRY.get_sample_value("asr_queue_depth", {"service": "transcription"}) == 1
    with pytest.raises(grpc.RpcError) as err:
        call(slow_server.stub)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = from_rpc_error(err.value)
    assert isinstance(error, Overloaded) and error.retry_after_s >= 1.0
    slow_server.model.release.set()
    for thread in threads:
        thread.join(10)
    assert metrics.REGISTRY.get_sample_value("asr_queue_depth", {"service": "transcription"}) == 0
