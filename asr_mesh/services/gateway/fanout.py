"""One long file transcribed by many replicas at once: plan at pauses, dispatch, retry, stitch.

How it runs (`FanOut.transcribe`):
1. One replica's `DetectSpeech` streams the file's speech ranges while the gateway streams it the
   PCM; `asr_mesh.services.common.chunking.ChunkPlanner` turns them into chunks of about
   `chunk_speech_s` seconds of speech, cut in pauses (the planner lockstep uses too).
2. Each chunk is sent, the moment its end is decided, as an ordinary `Transcribe` call to the
   least busy replica (`ReplicaPool`); at most `windows_per_replica` chunks per replica at once.
3. A chunk that fails on a replica for a reason another replica would not share (the replica
   went away, was full, ran out of its deadline) is retried elsewhere, at most `attempts`
   times in all (tenacity); any other error fails the file at once and cancels the rest.
4. The chunks' segments are shifted to file time and put together in time order.

Context across chunks: none. Each chunk is decoded exactly as a file of that length would be
(Whisper's context, the previous text, restarts at each cut, which falls in a pause), so the
transcript depends on the audio and the chunk size only, never on how many replicas there are or
which one took which chunk: one replica and ten give the same words. `benchmarks/tune_fanout.py`
measures what the restarts cost against decoding the whole file in one call.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from asr.common.v1 import audio_pb2
from asr.common.v1.transcript_pb2 import Segment
from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr_mesh.services.common import convert
from asr_mesh.services.common.chunking import ChunkPlanner
from asr_mesh.services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE, ProgressUpdate
from asr_mesh.services.common.errors import (
    Cancelled,
    DependencyFailed,
    InternalError,
    InvalidInput,
    from_rpc_error,
)
from asr_mesh.services.common.pcm import DEFAULT_CHUNK_BYTES, chunked
from asr_mesh.services.gateway.pcm_source import PcmSource
from asr_mesh.services.gateway.replicas import ReplicaPool

_tracer = trace.get_tracer(__name__)
PCM16K = audio_pb2.PcmFormat(
    sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)

ELSEWHERE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
)
"""Failures of a replica, not of the chunk: another replica may well succeed."""


FANOUT_MIN_S_DEFAULT = 0.0
"""0 = off: fan-out changes the transcript (context restarts at cuts); see docs/fanout.md."""
FANOUT_CHUNK_SPEECH_S_DEFAULT = 120.0
"""Seconds of speech per chunk (ditto)."""


@dataclass(frozen=True)
class FanoutPolicy:
    """When and how a file is fanned out (GatewaySettings.fanout_*)."""

    min_audio_s: float
    """Audio at least this long is fanned out; shorter audio goes to one replica in one call."""
    chunk_speech_s: float
    """Seconds of speech per chunk."""
    windows_per_replica: int = 1
    attempts: int = 3
    """Tries per chunk in all, each on another replica while one is left."""
    rest_s: float = 2.0
    """How long a replica that failed or said it was full gets no new chunk."""

    def applies(self, duration: float) -> bool:
        return self.min_audio_s > 0 and duration >= self.min_audio_s


@dataclass(frozen=True)
class Chunk:
    index: int
    start: float
    end: float


class _ReplicaFailed(Exception):
    """A chunk's attempt failed on `replica` in a way another replica may not."""

    def __init__(self, replica: str, err: grpc.RpcError):
        super().__init__(f"{replica}: {err.code().name}: {err.details()}")
        self.replica, self.err = replica, err


def shift_segment(segment: Segment, offset: float, index: int) -> Segment:
    """A chunk's segment moved to file time and numbered `index` in the file (a copy)."""
    moved = Segment()
    moved.CopyFrom(segment)
    moved.id = index
    for timed in (moved, *moved.words):
        timed.start_offset.CopyFrom(convert.duration(convert.seconds(timed.start_offset) + offset))
        timed.end_offset.CopyFrom(convert.duration(convert.seconds(timed.end_offset) + offset))
    return moved


class FanOut:
    """Fans one request's PCM out over the replicas of `pool` (one instance per request)."""

    def __init__(
        self,
        pool: ReplicaPool,
        policy: FanoutPolicy,
        *,
        window_deadline: Callable[[float], float],
        track: Callable[[grpc.Call], grpc.Call],
        cancelled: threading.Event,
    ):
        self._pool = pool
        self._policy = policy
        self._deadline = window_deadline
        self._track = track
        self._request_cancelled = cancelled
        self._stop = threading.Event()  # this fan-out failed: windows not started stay unstarted
        self._calls: list[grpc.Call] = []
        self._calls_lock = threading.Lock()

    @property
    def _stopped(self) -> bool:
        return self._stop.is_set() or self._request_cancelled.is_set()

    def _register(self, call: grpc.Call) -> grpc.Call:
        """Track a call for the request's cancellation and for this fan-out's own."""
        with self._calls_lock:
            self._calls.append(call)
        if self._stop.is_set():
            call.cancel()
        return self._track(call)

    def _abandon(self) -> None:
        """A chunk failed for good (or the caller left): stop every other window now."""
        self._stop.set()
        with self._calls_lock:
            for call in self._calls:
                call.cancel()

    # -- planning -------------------------------------------------------------------------

    def plan(self, pcm: PcmSource) -> Iterator[Chunk]:
        """Chunks as the replica's VAD settles them (retried on another replica if it fails)."""
        released = 0
        for attempt in self._retrying("speech detection"):
            with attempt:
                replica = self._pool.acquire()
                try:
                    planner, index = ChunkPlanner(self._policy.chunk_speech_s), 0
                    for ranges, processed, done in self._detect(replica, pcm):
                        for start, end in planner.feed(ranges) + (
                            planner.finish(processed) if done else []
                        ):
                            if index >= released:  # a replay re-plans the chunks already sent
                                released += 1
                                yield Chunk(index, start, end)
                            index += 1
                    if index == 0:
                        raise InternalError(
                            f"replica {replica} ended speech detection without a result"
                        )
                    return
                finally:
                    self._pool.release(replica)

    def _detect(
        self, replica: str, pcm: PcmSource
    ) -> Iterator[tuple[list[tuple[float, float]], float, bool]]:
        """(new speech ranges, seconds examined, finished) as the replica streams them."""

        def requests() -> Iterator[tr_pb.DetectSpeechRequest]:
            size = pcm.size if pcm.complete else 0  # still being decoded: not declared
            yield tr_pb.DetectSpeechRequest(
                config=tr_pb.DetectSpeechConfig(format=PCM16K, pcm_size_bytes=size)
            )
            for piece in pcm.chunks(DEFAULT_CHUNK_BYTES):
                yield tr_pb.DetectSpeechRequest(audio=audio_pb2.AudioChunk(pcm=piece))

        # VAD runs at far more than real time (and here no faster than the audio is decoded);
        # a quarter of the whole file's transcription deadline is ample.
        call = self._register(
            self._pool.stub(replica).DetectSpeech(
                requests(), timeout=self._deadline(pcm.duration_hint) / 4
            )
        )
        try:
            for response in call:
                ranges = [
                    (convert.seconds(r.start_offset), convert.seconds(r.end_offset))
                    for r in response.ranges
                ]
                yield ranges, convert.seconds(response.audio_processed), response.done
                if response.done:
                    return
            raise InternalError(f"replica {replica} closed speech detection without finishing")
        except grpc.RpcError as err:
            raise self._classify(replica, err) from None

    # -- dispatch ---------------------------------------------------------------------------

    def transcribe(
        self,
        pcm: PcmSource,
        config: tr_pb.TranscriptionConfig,
        progress: Callable[[ProgressUpdate], None],
    ) -> tuple[list[Segment], tr_pb.TranscriptionResult]:
        """Every chunk's segments in time order, and the first chunk's closing result.

        Planning runs in a thread of its own that queues chunks as speech detection settles
        them, so detection finishes at VAD speed even when every replica is busy.
        """
        in_flight = max(1, len(self._pool.replicas())) * self._policy.windows_per_replica
        slots = threading.Semaphore(in_flight)
        pool = ThreadPoolExecutor(max_workers=in_flight + 1, thread_name_prefix="fanout")
        planned: queue.SimpleQueue[Chunk | BaseException | None] = queue.SimpleQueue()
        futures: list[Future] = []
        chunks: list[Chunk] = []
        finished = [0, 0.0]
        failure: list[BaseException] = []  # the first chunk that failed for good
        lock = threading.Lock()

        def plan() -> None:
            try:
                for chunk in self.plan(pcm):
                    planned.put(chunk)
                planned.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the dispatching thread
                planned.put(exc)

        def run(chunk: Chunk) -> tuple[list[Segment], tr_pb.TranscriptionResult]:
            try:
                result = self._window(pcm, chunk, config)
            except BaseException as exc:
                with lock:
                    if not failure and not isinstance(exc, Cancelled):
                        failure.append(exc)
                self._abandon()
                raise
            finally:
                slots.release()
            with lock:
                finished[0] += 1
                finished[1] += chunk.end - chunk.start
                duration = pcm.duration_hint
                progress(
                    ProgressUpdate(
                        min(finished[1] / duration, 1.0) if duration else 1.0,
                        finished[1],
                        duration,
                        message=f"{finished[0]} windows transcribed",
                    )
                )
            return result

        def raise_if_failed() -> None:
            if failure:
                raise failure[0]
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]

        def next_chunk() -> Chunk | None:
            while True:
                try:
                    item = planned.get(timeout=0.5)
                except queue.Empty:
                    raise_if_failed()
                    continue
                if isinstance(item, BaseException):
                    raise item
                return item

        with _tracer.start_as_current_span("chain.fanout") as span:
            span.set_attributes(
                {
                    "asr.fanout.replicas": len(self._pool.replicas()),
                    "asr.fanout.chunk_speech_s": self._policy.chunk_speech_s,
                }
            )
            try:
                pool.submit(contextvars.copy_context().run, plan)
                while (chunk := next_chunk()) is not None:
                    while not slots.acquire(timeout=0.5):
                        raise_if_failed()
                    raise_if_failed()
                    chunks.append(chunk)
                    futures.append(pool.submit(contextvars.copy_context().run, run, chunk))
                wait(futures, return_when=FIRST_EXCEPTION)
                raise_if_failed()
                results = [future.result() for future in futures]
            except BaseException:
                self._abandon()
                wait(futures, timeout=1.0)  # cancelled windows wind down; the first failure wins
                if failure:
                    raise failure[0] from None
                raise
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
            span.set_attribute("asr.fanout.windows", len(chunks))
        placed = [(s, chunk.start) for chunk, (found, _) in zip(chunks, results) for s in found]
        return [shift_segment(s, at, k) for k, (s, at) in enumerate(placed)], results[0][1]

    def _window(
        self,
        pcm: PcmSource,
        chunk: Chunk,
        config: tr_pb.TranscriptionConfig,
    ) -> tuple[list[Segment], tr_pb.TranscriptionResult]:
        lo = int(chunk.start * SAMPLE_RATE) * BYTES_PER_SAMPLE
        piece = pcm.read(lo, int(chunk.end * SAMPLE_RATE) * BYTES_PER_SAMPLE)
        tried: list[str] = []
        with _tracer.start_as_current_span("chain.window") as span:
            span.set_attributes(
                {
                    "asr.window.index": chunk.index,
                    "asr.window.start_s": chunk.start,
                    "asr.window.end_s": chunk.end,
                }
            )
            for attempt in self._retrying(
                f"window {chunk.index + 1} ({chunk.start:.1f}-{chunk.end:.1f} s)"
            ):
                with attempt:
                    if self._stopped:
                        raise Cancelled("the request was cancelled")
                    replica = self._pool.acquire(avoid=tried)
                    tried.append(replica)
                    span.set_attribute("asr.replica", replica)
                    rest = 0.0
                    try:
                        return self._transcribe_on(replica, piece, config, chunk)
                    except _ReplicaFailed:
                        rest = self._policy.rest_s
                        raise
                    finally:
                        self._pool.release(replica, rest)
        raise AssertionError("unreachable")

    def _transcribe_on(
        self, replica: str, piece: bytes, config: tr_pb.TranscriptionConfig, chunk: Chunk
    ) -> tuple[list[Segment], tr_pb.TranscriptionResult]:
        window_config = tr_pb.TranscriptionConfig()
        window_config.CopyFrom(config)
        window_config.pcm_size_bytes = len(piece)

        def requests() -> Iterator[tr_pb.TranscribeRequest]:
            yield tr_pb.TranscribeRequest(config=window_config)
            for data in chunked(piece, DEFAULT_CHUNK_BYTES):
                yield tr_pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=data))

        call = self._register(
            self._pool.stub(replica).Transcribe(
                requests(), timeout=self._deadline(chunk.end - chunk.start)
            )
        )
        segments, result = [], None
        try:
            for response in call:
                kind = response.WhichOneof("payload")
                if kind == "segment":
                    segments.append(response.segment)
                elif kind == "result":
                    result = response.result
        except grpc.RpcError as err:
            raise self._classify(replica, err) from None
        if result is None:
            raise InternalError(
                f"transcription replica {replica} closed window {chunk.index + 1} without a result"
            )
        return segments, result

    # -- failures ---------------------------------------------------------------------------

    def _classify(self, replica: str, err: grpc.RpcError) -> Exception:
        if self._stopped or err.code() == grpc.StatusCode.CANCELLED:
            return Cancelled("the request was cancelled")
        if err.code() in ELSEWHERE:
            return _ReplicaFailed(replica, err)
        error = from_rpc_error(err, service="transcription")
        if not isinstance(error, InvalidInput):  # the replica's fault: say which one
            error.message = f"transcription replica {replica}: {error.message}"
            error.args = (error.message,)
        return error

    def _retrying(self, what: str) -> Retrying:
        def record(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            trace.get_current_span().add_event(
                "retry",
                {
                    "asr.retry.attempt": state.attempt_number,
                    "asr.retry.error": str(exc)[:300],
                    "asr.replica": getattr(exc, "replica", ""),
                },
            )

        def give_up(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            raise DependencyFailed(
                f"{what} failed on {state.attempt_number} attempts; last on transcription "
                f"replica {exc}"
            ) from None

        return Retrying(
            retry=retry_if_exception(
                lambda exc: isinstance(exc, _ReplicaFailed) and not self._stopped
            ),
            stop=stop_after_attempt(self._policy.attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
            before_sleep=record,
            retry_error_callback=give_up,
            reraise=False,
        )
