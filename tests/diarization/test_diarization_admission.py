"""Admission control of the diarization service: a bounded queue taken before the upload is read."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from conftest import channel_to, spy_calls
from pyannote.core import Annotation

from asr.common.v1 import audio_pb2
from asr.diarization.v1 import diarization_service_pb2 as pb
from asr.diarization.v1 import diarization_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import metrics
from asr_mesh.services.common.errors import Overloaded, from_rpc_error
from asr_mesh.services.common.scheduler import WorkQueue
from asr_mesh.services.diarization import servicer as servicer_module
from asr_mesh.services.diarization.core import Diarizer
from asr_mesh.services.diarization.server import DiarizationSettings, create_server

pytestmark = pytest.mark.grpc

PCM16K = audio_pb2.PcmFormat(sample_rate_hz=16_000, channels=1)
ONE_SECOND = np.zeros(16_000, dtype="<i2").tobytes()


class Blocking:
    """Backend stand-in that works until released (or until the service tells it to stop)."""

    name = "blocking"

    def __init__(self):
        self.release = threading.Event()

    def annotate(self, audio, min_speakers, max_speakers, progress):
        while not self.release.is_set():
            progress(0.0, "")
            time.sleep(0.01)
        return Annotation()


def gauge(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, {"service": "diarization"})


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def requests(**config):
    yield pb.DiarizeRequest(config=pb.DiarizationConfig(format=PCM16K, **config))
    yield pb.DiarizeRequest(audio=audio_pb2.AudioChunk(pcm=ONE_SECOND))


@pytest.fixture()
def busy(state_dir):
    """A server with one worker and one queue place, its worker busy until the test ends."""
    backend = Blocking()
    handle = create_server(
        DiarizationSettings(port=0, num_workers=1, max_queued=1), Diarizer(backend, max_speakers=4)
    )
    channel = channel_to(handle.port)
    stub = pb_grpc.DiarizationServiceStub(channel)
    calls: list[threading.Thread] = []

    def start_call(**kw) -> threading.Thread:
        thread = threading.Thread(target=lambda: _drain(stub.Diarize(requests(), timeout=30, **kw)))
        thread.start()
        calls.append(thread)
        return thread

    start_call()
    assert wait_until(lambda: gauge("asr_busy_workers") == 1)
    yield SimpleNamespace(stub=stub, backend=backend, start_call=start_call)
    backend.release.set()
    for thread in calls:
        thread.join(10)
    channel.close()
    handle.stop(0)


def _drain(responses) -> None:
    try:
        list(responses)
    except grpc.RpcError:
        pass


def test_settings_default_to_one_worker_and_four_queued(monkeypatch):
    assert DiarizationSettings().num_workers == 1
    assert DiarizationSettings().max_queued == 4
    monkeypatch.setenv("ASR_DIARIZATION_NUM_WORKERS", "3")
    monkeypatch.setenv("ASR_DIARIZATION_MAX_QUEUED", "0")
    settings = DiarizationSettings()
    assert (settings.num_workers, settings.max_queued) == (3, 0)


def test_a_full_queue_refuses_before_reading_the_upload(busy, monkeypatch):
    busy.start_call()
    assert wait_until(lambda: gauge("asr_queue_depth") == 1)
    # Counted on the server: the client only sends audio after `more` is set.
    audio_reads = spy_calls(monkeypatch, servicer_module, "read_pcm")
    consumed, more = [], threading.Event()

    def upload():
        consumed.append("config")
        yield pb.DiarizeRequest(config=pb.DiarizationConfig(format=PCM16K))
        more.wait(15)  # the audio follows only if the server reads on
        consumed.append("audio")
        yield pb.DiarizeRequest(audio=audio_pb2.AudioChunk(pcm=ONE_SECOND))

    try:
        with pytest.raises(grpc.RpcError) as err:
            list(busy.stub.Diarize(upload(), timeout=5))
        read, audio_read = list(consumed), list(audio_reads)  # before queued calls move on
    finally:
        more.set()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    error = from_rpc_error(err.value)
    assert isinstance(error, Overloaded) and error.retry_after_s >= 1.0
    assert "diarization is at capacity" in error.message
    assert read == ["config"]
    assert audio_read == [], "the server started reading audio it was going to refuse"


def test_impossible_speaker_counts_are_refused_before_queueing(busy):
    busy.start_call()
    assert wait_until(lambda: gauge("asr_queue_depth") == 1)
    with pytest.raises(grpc.RpcError) as err:
        list(busy.stub.Diarize(requests(num_speakers=9), timeout=5))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit of 4" in err.value.details()
    )


def test_a_cancelled_call_leaves_the_queue(busy):
    waiting = busy.stub.Diarize(requests(), timeout=30)
    assert wait_until(lambda: gauge("asr_queue_depth") == 1)
    waiting.cancel()
    assert wait_until(lambda: gauge("asr_queue_depth") == 0, timeout=3), (
        "a cancelled call kept its place in the queue"
    )
    assert gauge("asr_busy_workers") == 1  # the running call is untouched


def test_a_deadline_passing_in_the_queue_is_deadline_exceeded_and_frees_the_place(busy):
    with pytest.raises(grpc.RpcError) as err:
        list(busy.stub.Diarize(requests(), timeout=1.0))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: gauge("asr_queue_depth") == 0, timeout=3), (
        "a call past its deadline kept its place in the queue"
    )
    assert gauge("asr_busy_workers") == 1


def test_a_queued_call_runs_when_the_worker_frees(busy):
    results = []
    waiter = threading.Thread(
        target=lambda: results.extend(busy.stub.Diarize(requests(), timeout=30))
    )
    waiter.start()
    assert wait_until(lambda: gauge("asr_queue_depth") == 1)
    busy.backend.release.set()
    waiter.join(10)
    assert results and results[-1].WhichOneof("payload") == "result"
    assert wait_until(lambda: gauge("asr_busy_workers") == 0 and gauge("asr_queue_depth") == 0)


class Counting:
    """Backend stand-in recording how many annotations run at once; each batch takes a while."""

    name = "counting"

    def __init__(self, batch_s: float = 0.5):
        self.batch_s = batch_s
        self.lock = threading.Lock()
        self.running = self.most = self.finished = 0
        self.started = threading.Event()

    def annotate(self, audio, min_speakers, max_speakers, progress):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.set()
        try:
            for step in range(3):
                progress(step / 3, "batch")
                time.sleep(self.batch_s)  # a batch in flight: a cancel only lands at the next one
            return Annotation()
        finally:
            with self.lock:
                self.running -= 1
                self.finished += 1


class FakeContext:
    def __init__(self):
        self.callbacks = []

    def add_callback(self, callback):
        self.callbacks.append(callback)
        return True

    def time_remaining(self):
        return None

    def cancel(self):
        for callback in self.callbacks:
            callback()


def test_a_call_dropped_while_sending_progress_frees_its_slot_only_once_its_work_stops():
    backend = Counting()
    queue = WorkQueue(workers=1, max_queued=4, name="diarization")
    servicer = servicer_module.DiarizationServicer(Diarizer(backend, max_speakers=4), 60.0, queue)
    for _ in range(3):  # repeated submit + cancel must not pile up backend threads
        backend.started.clear()
        first = servicer.Diarize(requests(), FakeContext())
        progress = [next(first) for _ in range(2)]  # the opening update, then the first batch's
        assert all(r.WhichOneof("payload") == "progress" for r in progress)
        assert backend.started.is_set()
        # What gRPC does when the caller cancels while a progress message is being sent: the
        # servicer's generator is dropped at its `yield`.
        first.close()
        assert queue.running == 0
        assert backend.running == 0, "the slot was freed while the cancelled work still ran"
    second = list(servicer.Diarize(requests(), FakeContext()))
    assert second[-1].WhichOneof("payload") == "result"
    assert backend.most == 1, f"{backend.most} diarizations ran at once on one worker"
    assert backend.finished == 4


def test_a_cancelled_call_stops_its_backend_before_the_next_queued_call_starts():
    backend = Counting(batch_s=0.3)
    queue = WorkQueue(workers=1, max_queued=4, name="diarization")
    servicer = servicer_module.DiarizationServicer(Diarizer(backend, max_speakers=4), 60.0, queue)
    context = FakeContext()
    first = servicer.Diarize(requests(), context)
    next(first), next(first)
    results: list = []
    waiter = threading.Thread(
        target=lambda: results.extend(servicer.Diarize(requests(), FakeContext()))
    )
    waiter.start()
    assert wait_until(lambda: queue.waiting == 1)
    context.cancel()
    first.close()
    waiter.join(10)
    assert results and results[-1].WhichOneof("payload") == "result"
    assert backend.most == 1, f"{backend.most} diarizations ran at once on one worker"


def test_a_caller_that_stalls_mid_upload_is_refused_and_frees_its_worker(state_dir):
    """No deadline, no cancel, no more audio: without the idle guard this holds the only worker."""
    backend = Blocking()
    backend.release.set()
    settings = DiarizationSettings(port=0, num_workers=1, max_queued=1, upload_idle_timeout_s=0.5)
    handle = create_server(settings, Diarizer(backend, max_speakers=4))
    channel = channel_to(handle.port)
    stub = pb_grpc.DiarizationServiceStub(channel)
    resume, outcome = threading.Event(), {}

    def stalled_upload():
        yield pb.DiarizeRequest(config=pb.DiarizationConfig(format=PCM16K))
        yield pb.DiarizeRequest(audio=audio_pb2.AudioChunk(pcm=ONE_SECOND))
        resume.wait(30)  # the caller stops sending but keeps the stream open

    def stall():
        try:
            list(stub.Diarize(stalled_upload()))  # no deadline on purpose
        except grpc.RpcError as err:
            outcome["error"] = err

    staller = threading.Thread(target=stall)
    try:
        staller.start()
        assert wait_until(lambda: gauge("asr_busy_workers") == 1)
        responses = list(stub.Diarize(requests(), timeout=20))  # queued behind the staller
        assert responses[-1].WhichOneof("payload") == "result"
        staller.join(10)
    finally:
        resume.set()
        channel.close()
        handle.stop(0)
    error = outcome["error"]
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no message arrived for 0.5 s (ASR_DIARIZATION_UPLOAD_IDLE_TIMEOUT_S)" in error.details()


def test_reflection_streams_may_idle_past_the_upload_idle_time(state_dir):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    settings = DiarizationSettings(port=0, upload_idle_timeout_s=0.3, reflection_enabled=True)
    handle = create_server(settings, Diarizer(Blocking(), max_speakers=4))

    def questions():
        time.sleep(1.0)  # a person typing into grpcurl
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    try:
        with channel_to(handle.port) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            [answer] = list(stub.ServerReflectionInfo(questions(), timeout=10))
    finally:
        handle.stop(0)
    names = [s.name for s in answer.list_services_response.service]
    assert "asr.diarization.v1.DiarizationService" in names
