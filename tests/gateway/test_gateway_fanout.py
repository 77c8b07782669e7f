"""Fan-out of one long file across transcription replicas: real servers, the real base model.

The replicas are real gRPC transcription servers (in process, one Transcriber each over one
shared model; the kill -9 test runs them as processes); the gateway side is `GrpcStages` with a
`Downstream` whose transcription address lists the replicas.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import MODELS_DIR, REPO

from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.errors import Cancelled, DependencyFailed, MeshError
from asr_mesh.services.common.scheduler import WorkQueue
from asr_mesh.services.gateway.downstream import Deadlines, Downstream, GrpcStages
from asr_mesh.services.gateway.fanout import FanoutPolicy
from asr_mesh.services.gateway.pipeline import ChainOptions
from asr_mesh.services.gateway.replicas import ReplicaPool, round_robin_target, split_target

POLICY = FanoutPolicy(min_audio_s=60.0, chunk_speech_s=25.0, attempts=3, rest_s=0.5)
OPTIONS = ChainOptions.of(temperatures=(0.0,))  # no sampling: runs are comparable word for word
EXCERPT_S = 100


# -- the replica pool (pure) ------------------------------------------------------------------


def test_targets_name_fixed_replicas_or_a_dns_name():
    assert split_target("127.0.0.1:1,127.0.0.1:2") == (["127.0.0.1:1", "127.0.0.1:2"], None)
    assert split_target("127.0.0.1:50052") == (["127.0.0.1:50052"], None)
    assert split_target("dns:///transcription.asr.svc:50051") == ([], "transcription.asr.svc:50051")
    assert split_target("transcription:50051") == ([], "transcription:50051")
    assert round_robin_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert round_robin_target("dns:///t:1") == "dns:///t:1"


def test_pool_spreads_windows_avoids_failed_and_resting_replicas():
    pool = ReplicaPool("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3")
    taken = [pool.acquire() for _ in range(3)]
    assert sorted(taken) == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]  # least busy first
    for replica in taken:
        pool.release(replica)
    assert pool.acquire(avoid=["127.0.0.1:1", "127.0.0.1:2"]) == "127.0.0.1:3"
    pool.release("127.0.0.1:3", rest_s=30.0)  # it said it was full
    assert "127.0.0.1:3" not in {pool.acquire() for _ in range(4)}
    every = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert pool.acquire(avoid=every) in every  # all tried: any is better than none


def test_pool_follows_the_dns_answer_of_a_headless_service():
    answers = [["10.0.0.1", "10.0.0.2"], [], ["10.0.0.2", "10.0.0.3"]]
    pool = ReplicaPool(
        "dns:///transcription:50051", refresh_s=0.0, resolver=lambda host, port: answers.pop(0)
    )
    assert pool.replicas() == ["10.0.0.1:50051", "10.0.0.2:50051"]
    assert pool.replicas() == ["10.0.0.1:50051", "10.0.0.2:50051"]  # a failed lookup keeps the last
    assert pool.replicas() == ["10.0.0.2:50051", "10.0.0.3:50051"]


# -- real replicas ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def excerpt(corpus) -> bytes:
    from faster_whisper import decode_audio

    audio = decode_audio(str(corpus / "long" / "long.flac"))[: EXCERPT_S * 16000]
    return (audio * 32768.0).round().clip(-32768, 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def replicas():
    """Three transcription servers sharing one loaded model, each with its own work queue."""
    from asr_mesh.services.transcription.server import (
        TranscriptionSettings,
        build_transcriber,
        create_server,
    )

    settings = TranscriptionSettings(
        port=0, models_dir=MODELS_DIR, cpu_threads=2, device="cpu", warm_up=False
    )
    first = build_transcriber(settings)
    handles = []
    for _ in range(3):
        transcriber = build_transcriber(settings)
        transcriber.registry = first.registry
        transcriber.queue = WorkQueue(1, 4, name="transcription")
        handles.append((create_server(settings, transcriber), transcriber))
    yield handles
    for handle, _ in handles:
        handle.stop(0)


def stages_for(
    addresses: list[str], policy: FanoutPolicy = POLICY
) -> tuple[GrpcStages, Downstream]:
    downstream = Downstream("", ",".join(addresses), "", "", fanout=policy)
    return GrpcStages(downstream, Deadlines(base_s=60.0)), downstream


def words_of(transcript) -> list[tuple[str, float]]:
    return [
        (w.word, round(convert.seconds(w.start_offset), 2))
        for s in transcript.segments
        for w in s.words
    ]


def run_fanout(addresses, pcm, policy=POLICY):
    stages, downstream = stages_for(addresses, policy)
    progress = []
    try:
        return stages.transcribe(pcm, OPTIONS, progress.append), progress
    finally:
        downstream.close()


@pytest.fixture()
def spans(monkeypatch):
    """The fan-out's spans, kept in memory for the test to read."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from asr_mesh.services.gateway import fanout

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(fanout, "_tracer", provider.get_tracer("test"))
    return exporter


@pytest.fixture(scope="module")
def reference(replicas, excerpt):
    """The excerpt fanned out to one replica: the single-replica path at equal settings."""
    transcript, _ = run_fanout([f"127.0.0.1:{replicas[0][0].port}"], excerpt)
    return transcript


@pytest.mark.grpc
@pytest.mark.models
def test_three_replicas_give_the_words_of_one_in_time_order(replicas, excerpt, reference, spans):

    transcript, progress = run_fanout([f"127.0.0.1:{h.port}" for h, _ in replicas], excerpt)
    assert words_of(transcript) == words_of(reference) and len(words_of(reference)) > 100
    starts = [convert.seconds(s.start_offset) for s in transcript.segments]
    assert starts == sorted(starts) and [s.id for s in transcript.segments] == list(
        range(len(starts))
    )
    windows = [s for s in spans.get_finished_spans() if s.name == "chain.window"]
    assert len(windows) >= 3
    assert len({w.attributes["asr.replica"] for w in windows}) >= 2  # spread over replicas
    counted = [p.message for p in progress]
    assert counted[-1] == f"{len(windows)} windows transcribed"
    assert progress[-1].fraction == pytest.approx(1.0, abs=0.02)


@pytest.mark.grpc
@pytest.mark.models
def test_the_stitched_words_are_the_chunks_decoded_one_by_one(replicas, excerpt, reference):
    """Exactness against the core itself: each planned chunk decoded alone, shifted, joined."""
    import numpy as np

    from asr_mesh.services.common.chunking import ChunkPlanner
    from asr_mesh.services.common.domain import Segment
    from asr_mesh.services.transcription import longform
    from asr_mesh.services.transcription.core import TranscriptionOptions

    transcriber = replicas[0][1]
    samples = np.frombuffer(excerpt, dtype="<i2")
    planner = ChunkPlanner(POLICY.chunk_speech_s)
    speech = longform.speech_ranges(samples, transcriber._detect_speech)
    chunks = planner.feed(speech) + planner.finish(len(samples) / 16000)
    expected = []
    for a, b in chunks:
        events = transcriber.transcribe(
            samples[int(a * 16000) : int(b * 16000)], TranscriptionOptions(temperatures=(0.0,))
        )
        expected += [
            (w.word, round(w.start + a, 2))
            for e in events
            if isinstance(e, Segment)
            for w in e.words
        ]
    assert words_of(reference) == expected


@pytest.mark.grpc
@pytest.mark.models
def test_windows_of_an_unreachable_replica_are_retried_on_the_others(
    replicas, excerpt, reference, spans
):
    dead = f"127.0.0.1:{free_port()}"
    transcript, _ = run_fanout([dead, f"127.0.0.1:{replicas[1][0].port}"], excerpt)
    assert words_of(transcript) == words_of(reference)
    retries = [e for s in spans.get_finished_spans() for e in s.events if e.name == "retry"]
    assert retries and all(e.attributes["asr.replica"] == dead for e in retries)


class FullReplica(tr_grpc.TranscriptionServiceServicer):
    """A replica whose queue is always full: RESOURCE_EXHAUSTED, as the real one answers."""

    def __init__(self):
        self.refused = 0

    def DetectSpeech(self, request_iterator, context):
        self.refused += 1
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "transcription is busy; retry in 1 s")

    Transcribe = DetectSpeech


@pytest.mark.grpc
@pytest.mark.models
def test_a_full_replica_passes_its_windows_to_the_others(replicas, excerpt, reference):
    full = FullReplica()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    tr_grpc.add_TranscriptionServiceServicer_to_server(full, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        transcript, _ = run_fanout(
            [f"127.0.0.1:{port}", f"127.0.0.1:{replicas[2][0].port}"], excerpt
        )
    finally:
        server.stop(0)
    assert words_of(transcript) == words_of(reference)
    assert full.refused >= 1  # it was asked, said it was full, and the other replica took over


class FailingReplica(tr_grpc.TranscriptionServiceServicer):
    """A replica with a broken disk: it answers, but every call fails with INTERNAL."""

    def DetectSpeech(self, request_iterator, context):
        context.abort(grpc.StatusCode.INTERNAL, "the model file is unreadable")

    def Transcribe(self, request_iterator, context):
        context.abort(grpc.StatusCode.INTERNAL, "the model file is unreadable")


@pytest.fixture()
def failing_replica():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    tr_grpc.add_TranscriptionServiceServicer_to_server(FailingReplica(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.grpc
def test_a_replica_that_always_fails_gives_an_error_naming_it(failing_replica, excerpt):
    started = time.monotonic()
    with pytest.raises(MeshError) as err:
        run_fanout([failing_replica], excerpt)
    assert failing_replica in err.value.message and "unreadable" in err.value.message
    assert time.monotonic() - started < 30


@pytest.mark.grpc
def test_no_replica_reachable_fails_after_three_attempts_naming_one(excerpt):
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with pytest.raises(DependencyFailed) as err:
        run_fanout(dead, excerpt)
    assert "3 attempts" in err.value.message and any(d in err.value.message for d in dead)


@pytest.mark.grpc
@pytest.mark.models
def test_cancellation_reaches_every_replicas_window(replicas, excerpt):
    stages, downstream = stages_for([f"127.0.0.1:{h.port}" for h, _ in replicas])
    outcome: list[BaseException | object] = []

    def call():
        try:
            outcome.append(stages.transcribe(excerpt, OPTIONS, lambda update: None))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(t.queue.running for _, t in replicas) < 3:
            time.sleep(0.05)
        assert sum(t.queue.running for _, t in replicas) == 3, "every replica should be decoding"
        stages.cancel()
        thread.join(15)
        assert not thread.is_alive() and isinstance(outcome[0], Cancelled)
        # A replica notices when its decode next yields a segment (a Whisper window, seconds;
        # here the three replicas share one model and two cores, so it can take a while).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(t.queue.running for _, t in replicas):
            time.sleep(0.05)
        assert not any(t.queue.running for _, t in replicas), (
            "a replica kept decoding a cancelled window"
        )
    finally:
        downstream.close()


# -- replicas as processes: kill -9 one mid-file ----------------------------------------------


def start_replica(port: int, tmp: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "ASR_TRANSCRIPTION_PORT": str(port),
        "ASR_TRANSCRIPTION_HOST": "127.0.0.1",
        "ASR_TRANSCRIPTION_MODELS_DIR": str(MODELS_DIR),
        "ASR_TRANSCRIPTION_CPU_THREADS": "2",
        "ASR_TRANSCRIPTION_WARM_UP": "false",
        "ASR_STATE_DIR": str(tmp),
        "ASR_TRANSCRIPTION_METRICS_PORT": "0",
        "PYANNOTE_METRICS_ENABLED": "false",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "asr_mesh.services.transcription"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.mesh
@pytest.mark.models
def test_kill_9_of_one_replica_mid_file_costs_only_its_windows(excerpt, reference, tmp_path):
    ports = [free_port() for _ in range(3)]
    processes = [start_replica(port, tmp_path) for port in ports]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(serving(a) for a in addresses):
            time.sleep(0.5)
        assert all(serving(a) for a in addresses), "the replicas did not start"
        stages, downstream = stages_for(addresses)
        killed: list[str] = []

        def kill_when_busy():
            while not killed:
                busy = downstream.replicas.busy() if downstream.replicas else {}
                victims = list(busy)  # the planner's replica too: its detection is replayed
                if len(busy) >= 2:
                    os.kill(processes[addresses.index(victims[0])].pid, signal.SIGKILL)
                    killed.append(victims[0])
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        try:
            transcript = stages.transcribe(excerpt, OPTIONS, lambda update: None)
        finally:
            downstream.close()
        assert killed, "no replica was killed mid-file"
        assert words_of(transcript) == words_of(reference)
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
