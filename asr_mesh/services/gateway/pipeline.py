"""The chain the gateway runs, pure: preprocess → (transcription ∥ diarization) → merge.

Stages are reached through the `Stages` protocol, so this module knows nothing of gRPC (it
holds protobuf messages: options and segments pass through the gateway unconverted); the
gateway plugs in gRPC adapters (`downstream.py`), tests plug in fakes. Trace context crosses
into the parallel branch through `contextvars`, which is where OpenTelemetry keeps it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from opentelemetry import trace

from asr.common.v1 import options_pb2, transcript_pb2
from asr_mesh.services.common.domain import MediaReport, ProgressUpdate, SpeakerTurn
from asr_mesh.services.common.domain_errors import Cancelled
from asr_mesh.services.common.options import FORMAT_NAMES, effective, from_flat_dict

SIBLING_GRACE_S = 0.25
"""How long a failed chain waits for its cancelled sibling branch before reporting the failure."""

STAGES = ("upload", "preprocess", "transcription", "diarization", "merge")

ProgressSink = Callable[["ProgressUpdate | MediaReport"], None]
"""Receives a stage's progress (and, from preprocessing, the media report as soon as known)."""


@dataclass(frozen=True)
class ChainOptions:
    """What the caller asked for: the file's name and its effective options.

    `recognition` is the request's `asr.common.v1.RecognitionOptions`, validated and with the
    gateway's defaults filled in (`asr_mesh.services.common.options.effective`); each stage reads
    its own sub-message of it.
    """

    filename: str = ""
    recognition: options_pb2.RecognitionOptions = field(
        default_factory=lambda: effective(options_pb2.RecognitionOptions())
    )

    @classmethod
    def of(cls, filename: str = "", **flat: Any) -> ChainOptions:
        """From flat option values as job records store them
        (`asr_mesh.services.common.options.to_flat_dict`)."""
        return cls(filename, from_flat_dict(flat))

    @property
    def diarize(self) -> bool:
        return self.recognition.diarization.enabled

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(FORMAT_NAMES[f] for f in self.recognition.output.formats)

    @property
    def recording_id(self) -> str:
        return Path(self.filename).stem if self.filename else "recording"


@dataclass
class Decoded:
    """Output of preprocessing: 16 kHz mono s16le PCM and what the source was."""

    media: MediaReport
    pcm: bytes | memoryview
    duration: float


@dataclass
class Transcript:
    segments: list[transcript_pb2.Segment]
    """As the transcription service sent them: the gateway hands them to merge unread."""
    language_code: str
    model: str


@dataclass
class Diarization:
    turns: list[SpeakerTurn]
    speaker_count: int
    backend: str


@dataclass
class RenderedDocument:
    format: str
    content: str
    file_extension: str
    media_type: str


@dataclass
class Merged:
    segments: list[transcript_pb2.Segment]
    """As the merge service sent them: the gateway streams them to the caller unread."""
    speakers: list[str]
    documents: list[RenderedDocument]


@dataclass
class ChainResult:
    media: MediaReport
    audio_duration: float
    transcript: Transcript
    diarization: Diarization | None
    merged: Merged
    seconds: float


class Stages(Protocol):
    """How the chain reaches each service."""

    def preprocess(
        self, upload: Path, options: ChainOptions, progress: ProgressSink
    ) -> Decoded: ...

    def transcribe(
        self, pcm: bytes | memoryview, options: ChainOptions, progress: ProgressSink
    ) -> Transcript: ...

    def diarize(
        self, pcm: bytes | memoryview, options: ChainOptions, progress: ProgressSink
    ) -> Diarization: ...

    def merge(
        self,
        transcript: Transcript,
        diarization: Diarization | None,
        options: ChainOptions,
        duration: float,
        trace_id: str,
    ) -> Merged: ...

    def cancel(self) -> None:
        """Abandon every call still in flight (the other branch failed or the caller left)."""


Emit = Callable[[str, "ProgressUpdate | MediaReport"], None]


_tracer = trace.get_tracer(__name__)


def _staged(stage: str, fn, *args, emit: Emit):
    """Run one stage inside its own span; its progress also lands on the span as events."""
    with _tracer.start_as_current_span(f"chain.{stage}") as span:
        last_decile = [-1]

        def sink(update) -> None:
            if isinstance(update, ProgressUpdate):
                decile = int(update.fraction * 10)
                if decile != last_decile[0]:  # one event per 10 %, not per chunk
                    last_decile[0] = decile
                    span.add_event(
                        "progress",
                        {
                            "asr.progress.fraction": round(update.fraction, 3),
                            "asr.progress.audio_s": round(update.audio_processed, 3),
                        },
                    )
            emit(stage, update)

        return fn(*args, sink)


def run_chain(
    upload: Path, options: ChainOptions, stages: Stages, emit: Emit, trace_id: str = ""
) -> ChainResult:
    """Run the whole chain on a spooled upload, reporting progress through `emit(stage, event)`.

    With stages that can stream decoded PCM (`streams_pcm`, the gateway's gRPC stages),
    transcription and diarization start as soon as preprocessing has announced the duration and
    read the audio as it is decoded; otherwise they start when decoding is done.
    """
    started = time.perf_counter()
    if getattr(stages, "streams_pcm", False):
        decoded, transcript, diarization = _pipelined(upload, options, stages, emit)
    else:
        decoded = _staged("preprocess", stages.preprocess, upload, options, emit=emit)
        emit(
            "preprocess", ProgressUpdate(1.0, decoded.duration, decoded.duration, message="decoded")
        )
        branches = {
            "transcription": lambda: _staged(
                "transcription", stages.transcribe, decoded.pcm, options, emit=emit
            )
        }
        if options.diarize:
            branches["diarization"] = lambda: _staged(
                "diarization", stages.diarize, decoded.pcm, options, emit=emit
            )
        results = (
            _together(branches, stages)
            if options.diarize
            else {"transcription": branches["transcription"]()}
        )
        transcript = cast(Transcript, results["transcription"])
        diarization = cast("Diarization | None", results.get("diarization"))

    emit("merge", ProgressUpdate(0.0, message="merging"))
    with _tracer.start_as_current_span("chain.merge"):
        merged = stages.merge(transcript, diarization, options, decoded.duration, trace_id)
    emit("merge", ProgressUpdate(1.0, message="merged"))
    return ChainResult(
        media=decoded.media,
        audio_duration=decoded.duration,
        transcript=transcript,
        diarization=diarization,
        merged=merged,
        seconds=time.perf_counter() - started,
    )


def _pipelined(
    upload: Path, options: ChainOptions, stages, emit: Emit
) -> tuple[Decoded, Transcript, Diarization | None]:
    """Preprocessing, transcription and diarization at once over PCM as it is decoded."""
    pcm = stages.new_pcm(upload)

    def preprocess() -> Decoded:
        try:
            decoded = _staged(
                "preprocess",
                lambda u, o, sink: stages.preprocess_into(u, o, sink, pcm),
                upload,
                options,
                emit=emit,
            )
        except BaseException as exc:
            pcm.fail(exc)  # readers stop; the chain reports this error, not theirs
            raise
        emit(
            "preprocess", ProgressUpdate(1.0, decoded.duration, decoded.duration, message="decoded")
        )
        return decoded

    def branch(stage: str, fn) -> Callable[[], object]:
        def run():
            pcm.wait_until_started()
            return _staged(stage, fn, pcm, options, emit=emit)

        return run

    calls: dict[str, Callable[[], object]] = {
        "preprocess": preprocess,
        "transcription": branch("transcription", stages.transcribe),
    }
    if options.diarize:
        calls["diarization"] = branch("diarization", stages.diarize)
    try:
        results = _together(calls, stages, blame_first="preprocess")
    finally:
        pcm.close()
    return (
        cast(Decoded, results["preprocess"]),
        cast(Transcript, results["transcription"]),
        cast("Diarization | None", results.get("diarization")),
    )


def _together(
    calls: dict[str, Callable[[], object]], stages: Stages, blame_first: str = ""
) -> dict[str, object]:
    """Run `calls` at once, each in its own thread and copy of the context (one Context cannot
    be entered by two threads, and each call's spans must parent to the request span).

    The moment one fails the others are cancelled and a failure is raised: a dead diarization
    service must not leave the caller waiting for the whole transcription (nor for the cancelled
    siblings to wind down, beyond a moment). The failure reported is `blame_first`'s when it
    failed for a reason of its own (the branches reading preprocessing's PCM fail when it does),
    else the first call's, in order, that was not merely cancelled.
    """
    pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="chain")
    try:
        futures = {
            name: pool.submit(contextvars.copy_context().run, fn) for name, fn in calls.items()
        }
        wait(futures.values(), return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures.values()):
            stages.cancel()
            wait(futures.values(), timeout=SIBLING_GRACE_S)
            errors: dict[str, BaseException] = {
                name: exc
                for name, f in futures.items()
                if f.done() and (exc := f.exception()) is not None
            }
            order = ([blame_first] if blame_first in errors else []) + list(errors)
            chosen = next(
                (errors[n] for n in order if not isinstance(errors[n], Cancelled)), errors[order[0]]
            )
            raise chosen
        return {name: f.result() for name, f in futures.items()}
    finally:
        pool.shutdown(wait=False)
