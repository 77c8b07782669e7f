"""Speaker diarization core. Pure: no gRPC, no environment reads; the backend is injected.

`Diarizer.diarize` takes float32 16 kHz mono audio and yields `ProgressUpdate`s and then one
`DiarizationOutcome`. A backend turns audio into a pyannote `Annotation`; this module turns that
into what callers use: non-overlapping turns in time order (labels SPEAKER_00.. by first
appearance), overlap regions and the speaker count.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pyannote.core import Annotation

from asr_mesh.services.common.domain import SAMPLE_RATE, ProgressUpdate, SpeakerTurn, TimeRange
from asr_mesh.services.common.domain_errors import Cancelled, InvalidInput

tracer = trace.get_tracer(__name__)


class Backend(Protocol):
    """What the core needs from a diarization backend."""

    name: str

    def annotate(
        self,
        audio: np.ndarray,
        min_speakers: int,
        max_speakers: int,
        progress: Callable[[float, str], None],
    ) -> Annotation:
        """Speaker turns (any hashable labels) with a count within [min_speakers, max_speakers].

        `progress` is called between units of work (batches, steps); it raises `Cancelled` once
        the caller has gone, which is how a backend stops early: it need not catch it.
        """
        ...


@dataclass(frozen=True)
class DiarizationOptions:
    """What a caller may choose per request (0 means "not set")."""

    num_speakers: int = 0
    min_speakers: int = 0
    max_speakers: int = 0


@dataclass(frozen=True)
class DiarizationOutcome:
    """Closing result of one diarization."""

    exclusive_turns: tuple[SpeakerTurn, ...]
    overlaps: tuple[TimeRange, ...]
    speaker_count: int
    backend: str
    audio_duration: float
    processing_seconds: float


def speaker_bounds(options: DiarizationOptions, limit: int) -> tuple[int, int]:
    """Resolve the request's speaker options into (min, max); refuse impossible requests."""
    for name in ("num_speakers", "min_speakers", "max_speakers"):
        value = getattr(options, name)
        if value < 0:
            raise InvalidInput(f"{name} must not be negative, got {value}", field=f"config.{name}")
        if value > limit:
            raise InvalidInput(
                f"{name} is {value}, above this service's limit of {limit} speakers",
                field=f"config.{name}",
            )
    if options.num_speakers:
        if (options.min_speakers and options.min_speakers > options.num_speakers) or (
            options.max_speakers and options.max_speakers < options.num_speakers
        ):
            raise InvalidInput(
                f"num_speakers={options.num_speakers} contradicts"
                f" min_speakers={options.min_speakers} / max_speakers={options.max_speakers}",
                field="config.num_speakers",
            )
        return options.num_speakers, options.num_speakers
    low = options.min_speakers or 1
    high = options.max_speakers or limit
    if low > high:
        raise InvalidInput(
            f"min_speakers ({low}) is greater than max_speakers ({high})",
            field="config.min_speakers",
        )
    return low, high


SECONDARY_TRACK_PREFIX = "overlap"
"""Track names starting with this mark speech laid over another speaker's turn (the embedding
backend's overlap pass): it counts as overlap but never decides who holds a turn or the order
in which speakers are named, so turns and names are the same with or without that pass."""


def exclusive_turns(annotation: Annotation) -> tuple[list[SpeakerTurn], list[TimeRange], int]:
    """Annotation → (non-overlapping turns in time order, overlap regions, speaker count).

    Labels become SPEAKER_00, SPEAKER_01.. in order of first appearance. Where speakers overlap,
    the turn goes to whoever already held it (the main speaker keeps the floor; a backchannel
    shows up in `overlaps`), else to the speaker whose turn started first. Secondary tracks
    (`SECONDARY_TRACK_PREFIX`) count as overlap only.
    """
    tracks = sorted(
        (
            (seg.start, seg.end, label, not str(track).startswith(SECONDARY_TRACK_PREFIX))
            for seg, track, label in annotation.itertracks(yield_label=True)
            if seg.end > seg.start
        ),
        key=lambda t: (not t[3], t[0], t[1], str(t[2])),
    )
    names: dict[Any, str] = {}
    for _start, _end, label, _primary in tracks:  # primary tracks first, each group in time order
        names.setdefault(label, f"SPEAKER_{len(names):02d}")
    points = sorted({t for start, end, _, _ in tracks for t in (start, end)})
    turns: list[list[Any]] = []
    overlaps: list[list[float]] = []
    holder = None
    for a, b in zip(points[:-1], points[1:]):
        active = [
            (start, names[label], primary)
            for start, end, label, primary in tracks
            if start <= a and end >= b
        ]
        if not active:
            holder = None
            continue
        speakers = {name for _, name, _ in active}
        if len(speakers) > 1:
            if overlaps and abs(overlaps[-1][1] - a) < 1e-9:
                overlaps[-1][1] = b
            else:
                overlaps.append([a, b])
        floor = [(start, name) for start, name, primary in active if primary] or [
            (start, name) for start, name, _ in active
        ]
        if holder not in {name for _, name in floor}:
            holder = min(floor)[1]
        if turns and turns[-1][0] == holder and abs(turns[-1][2] - a) < 1e-9:
            turns[-1][2] = b
        else:
            turns.append([holder, a, b])
    return (
        [SpeakerTurn(speaker=s, start=float(a), end=float(b)) for s, a, b in turns],
        [TimeRange(float(a), float(b)) for a, b in overlaps],
        len(names),
    )


class Diarizer:
    """Runs one backend under the service's speaker limit and reports progress.

    `on_work(audio_s, processing_s)` is called after each finished diarization (the server
    feeds its real-time-factor metrics with it).
    """

    def __init__(
        self,
        backend: Backend,
        max_speakers: int = 10,
        *,
        on_work: Callable[[float, float], None] | None = None,
    ):
        self.backend = backend
        self.max_speakers = max_speakers
        self._on_work = on_work or (lambda audio_s, processing_s: None)

    def check(self, options: DiarizationOptions) -> None:
        """Refuse speaker options that can never run, before any audio is read or queued."""
        speaker_bounds(options, self.max_speakers)

    def diarize(
        self, audio: np.ndarray, options: DiarizationOptions, cancel: threading.Event | None = None
    ) -> Iterator[ProgressUpdate | DiarizationOutcome]:
        """Yield progress updates, then one `DiarizationOutcome`.

        Setting `cancel` (or closing this generator) stops the backend at its next batch; the
        generator then raises `Cancelled`. One span, `diarization.diarize`, covers the work, with
        progress as span events; the backend's own stages are its children.
        """
        low, high = speaker_bounds(options, self.max_speakers)
        duration = len(audio) / SAMPLE_RATE
        cancel = cancel or threading.Event()
        started = time.perf_counter()
        # Not a "current" span: a generator may resume in another context, so the span is ended
        # explicitly and handed to the worker thread as its parent context.
        span = tracer.start_span(
            "diarization.diarize",
            attributes={
                "asr.audio.duration_s": duration,
                "asr.diarization.backend": self.backend.name,
                "asr.diarization.min_speakers": low,
                "asr.diarization.max_speakers": high,
            },
        )
        try:
            yield ProgressUpdate(0.0, 0.0, duration, message=f"diarizing with {self.backend.name}")
            annotation = Annotation()
            if len(audio):
                annotation = yield from self._run(audio, low, high, duration, started, cancel, span)
            turns, overlaps, count = exclusive_turns(annotation)
            processing = time.perf_counter() - started
            rtf = processing / duration if duration else 0.0
            span.set_attributes(
                {
                    "asr.rtf": rtf,
                    "asr.diarization.speakers": count,
                    "asr.diarization.turns": len(turns),
                    "asr.diarization.overlaps": len(overlaps),
                }
            )
            self._on_work(duration, processing)
            yield ProgressUpdate(1.0, duration, duration, message="diarization done")
            yield DiarizationOutcome(
                exclusive_turns=tuple(turns),
                overlaps=tuple(overlaps),
                speaker_count=count,
                backend=self.backend.name,
                audio_duration=duration,
                processing_seconds=processing,
            )
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            cancel.set()  # whatever happened, the worker has nothing left to do
            span.end()

    def _run(
        self,
        audio: np.ndarray,
        low: int,
        high: int,
        duration: float,
        started: float,
        cancel: threading.Event,
        span: trace.Span,
    ) -> Generator[ProgressUpdate, None, Annotation]:
        # The backend blocks for the whole audio; it runs in a worker thread so its progress
        # reaches the caller while it works, and so a cancelled caller can stop it between batches.
        events: queue.Queue[tuple[float, str] | None] = queue.Queue()
        result: dict[str, Any] = {}
        parent = trace.set_span_in_context(span)

        def report(fraction: float, message: str = "") -> None:
            if cancel.is_set():
                raise Cancelled("diarization cancelled by the caller")
            events.put((fraction, message))

        def work() -> None:
            token = otel_context.attach(parent)
            try:
                result["annotation"] = self.backend.annotate(audio, low, high, report)
            except BaseException as exc:  # handed to the caller's thread below
                result["error"] = exc
            finally:
                otel_context.detach(token)
                events.put(None)

        worker = threading.Thread(target=work, name=f"diarize-{self.backend.name}", daemon=True)
        worker.start()
        try:
            yield from self._relay(events, span, started, duration)
        finally:
            # Closed early (caller gone: gRPC drops the generator, e.g. while sending progress),
            # the backend would otherwise keep running after the queue slot is released. Stop
            # it at its next batch and wait for it, so the slot is only freed once the work is.
            cancel.set()
            worker.join()
        if "error" in result:
            # Domain errors keep their meaning; anything else becomes INTERNAL (logged, with a
            # trace id) in the error-mapping interceptor, never a stack trace to the caller.
            raise result["error"]
        return result["annotation"]

    @staticmethod
    def _relay(
        events: queue.Queue[tuple[float, str] | None],
        span: trace.Span,
        started: float,
        duration: float,
    ) -> Iterator[ProgressUpdate]:
        """Turn the worker's progress reports into `ProgressUpdate`s until it is done."""
        last = 0.0
        while (event := events.get()) is not None:
            fraction = min(max(event[0], last), 0.99)
            if fraction - last < 0.01 and not event[1]:
                continue
            last = fraction
            elapsed = time.perf_counter() - started
            if event[1]:
                span.add_event("progress", {"fraction": round(fraction, 4), "message": event[1]})
            yield ProgressUpdate(
                fraction=fraction,
                audio_processed=fraction * duration,
                audio_total=duration,
                eta=elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0,
                message=event[1],
            )
