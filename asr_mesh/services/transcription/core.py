"""Speech recognition with faster-whisper. Pure: no gRPC, no environment reads.

`Transcriber.transcribe` takes 16 kHz mono audio (float32, or int16 PCM samples so hour-long
audio is never copied to float whole) and yields progress updates and domain `Segment`s as they
are decoded, then one `TranscriptionSummary`.

Two decoding paths:
- **sequential** (audio under `LONG_FORM_MIN_S`, and the balanced and max-quality profiles): plain
  faster-whisper `WhisperModel.transcribe`, identical output to calling it directly.
- **lockstep** (long audio, on request: `strategy=lockstep`): the audio cut at its longest pauses
  into chunks, each decoded by plain faster-whisper, their model calls batched together (see
  `lockstep`).
- **batched** (long audio, fast profile): windows cut at silences and decoded in batches with
  timestamps, failed windows redone with temperature fallback (see `longform`).

Both paths pass through the hallucination guards (`guards`): silent windows dropped, phrase
loops cut, and a decode without VAD when VAD hears nothing in audio that has energy.
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import trace

from asr_mesh.services.common.domain import SAMPLE_RATE, ProgressUpdate, Segment, Word
from asr_mesh.services.common.domain_errors import InvalidInput
from asr_mesh.services.common.options import DEFAULT_LANGUAGE
from asr_mesh.services.common.scheduler import WorkQueue
from asr_mesh.services.transcription import guards, lockstep, longform
from asr_mesh.services.transcription.longform import VadParams, Window
from asr_mesh.services.transcription.models import ModelRegistry

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""faster-whisper's own fallback schedule; sampling above 0 makes output vary run to run."""
SEQUENTIAL, BATCHED, LOCKSTEP = "sequential", "batched", "lockstep"
STRATEGIES = (SEQUENTIAL, BATCHED, LOCKSTEP)


@dataclass(frozen=True)
class Profile:
    """A named set of decoding parameters (documented in the proto and README)."""

    name: str
    beam_size: int
    best_of: int
    temperatures: tuple[float, ...]
    long_form: str
    batched_beam_size: int
    """Beam for windows decoded in batches (failed windows are redone with `beam_size`)."""


PROFILES = {
    "max_quality": Profile("max_quality", 5, 5, DEFAULT_TEMPERATURES, SEQUENTIAL, 5),
    "balanced": Profile("balanced", 5, 5, DEFAULT_TEMPERATURES, SEQUENTIAL, 5),
    "fast": Profile("fast", 1, 1, (0.0, 0.4, 0.8), BATCHED, 1),
}
DEFAULT_PROFILE = "balanced"


@dataclass(frozen=True)
class TranscriptionOptions:
    """What a caller may choose per request; zero/empty values mean "the profile's"."""

    language_code: str = DEFAULT_LANGUAGE
    model: str = ""
    profile: str = DEFAULT_PROFILE
    beam_size: int = 0
    best_of: int = 0
    temperatures: tuple[float, ...] = ()
    word_timestamps: bool = True
    vad_filter: bool = True
    initial_prompt: str = ""
    hotwords: str = ""
    strategy: str = ""
    batch_size: int = 0


@dataclass(frozen=True)
class Decoding:
    """Options resolved against the profile: what actually runs."""

    profile: str
    beam_size: int
    batched_beam_size: int
    best_of: int
    temperatures: tuple[float, ...]
    strategy: str
    batch_size: int
    language: str | None
    word_timestamps: bool
    vad_filter: bool
    initial_prompt: str | None
    hotwords: str | None

    def whisper_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by both faster-whisper entry points."""
        return dict(
            language=self.language,
            beam_size=self.beam_size,
            best_of=self.best_of,
            word_timestamps=self.word_timestamps,
            initial_prompt=self.initial_prompt,
            hotwords=self.hotwords,
        )


@dataclass(frozen=True)
class TranscriptionSummary:
    """Closing figures of one transcription."""

    language_code: str
    language_probability: float
    audio_duration: float
    model: str
    device: str
    compute_type: str
    processing_seconds: float
    segment_count: int
    profile: str = DEFAULT_PROFILE
    strategy: str = SEQUENTIAL
    batch_size: int = 1
    queue_wait_seconds: float = 0.0
    vad_fallback: bool = False
    redecoded_windows: int = 0
    repetitions_removed: int = 0
    invented_removed: int = 0
    """Segments dropped as invented: squeezed improbable words, or text where VAD heard none."""


@dataclass
class _Stats:
    language: str = ""
    language_probability: float = 1.0
    batch_size: int = 1
    vad_fallback: bool = False
    redecoded: int = 0
    tails: int = 0
    gain_db: float = 0.0
    invented: int = 0
    speech: list[tuple[float, float]] | None = None
    """VAD speech ranges of the whole audio, computed once (None: VAD off)."""
    loops: guards.LoopFilter = field(default_factory=guards.LoopFilter)

    def invented_segment(self, segment: Segment) -> bool:
        """Whether `segment` is one of Whisper's inventions (see `guards`); counts it."""
        invented = guards.is_squeezed(segment) or (
            not self.vad_fallback and guards.outside_speech(segment, self.speech or [])
        )
        self.invented += invented
        return invented


def whisper_language(language_code: str) -> str | None:
    """BCP-47 → Whisper's language code: "pt-BR" → "pt"; "auto" → None (detect)."""
    code = (language_code or DEFAULT_LANGUAGE).strip()
    if code.lower() == "auto":
        return None
    primary = code.replace("_", "-").split("-")[0].lower()
    if not primary.isalpha() or len(primary) not in (2, 3):
        raise InvalidInput(
            f"language_code {language_code!r} is not a BCP-47 tag", field="config.language_code"
        )
    return primary


def resolve(
    options: TranscriptionOptions, duration: float, long_form_min_s: float, max_batch_size: int
) -> Decoding:
    """Validate the options and fill the blanks from the profile."""
    profile = PROFILES.get(options.profile or DEFAULT_PROFILE)
    if profile is None:
        raise InvalidInput(
            f"unknown quality profile {options.profile!r}; choose from {', '.join(PROFILES)}",
            field="config.profile",
        )
    temperatures = tuple(options.temperatures) or profile.temperatures
    if any(t < 0 or t > 2 for t in temperatures):
        raise InvalidInput("temperatures must be between 0 and 2", field="config.temperatures")
    for name in ("beam_size", "best_of", "batch_size"):
        if getattr(options, name) < 0:
            raise InvalidInput(f"{name} must not be negative", field=f"config.{name}")
    if options.beam_size > 20 or options.best_of > 20:
        raise InvalidInput("beam_size and best_of must be at most 20", field="config.beam_size")
    strategy = options.strategy or profile.long_form
    if strategy not in STRATEGIES:
        raise InvalidInput(f"unknown strategy {options.strategy!r}", field="config.strategy")
    if duration < long_form_min_s:
        strategy = SEQUENTIAL
    return Decoding(
        profile=profile.name,
        beam_size=options.beam_size or profile.beam_size,
        batched_beam_size=options.beam_size or profile.batched_beam_size,
        best_of=options.best_of or profile.best_of,
        temperatures=temperatures,
        strategy=strategy,
        batch_size=min(options.batch_size, max_batch_size) if options.batch_size else 0,
        language=whisper_language(options.language_code),
        word_timestamps=options.word_timestamps,
        vad_filter=options.vad_filter,
        initial_prompt=options.initial_prompt or None,
        hotwords=options.hotwords or None,
    )


class Transcriber:
    """Runs faster-whisper models from a registry on one device/compute type.

    `queue` (optional) bounds concurrent work and refuses requests beyond its queue;
    `on_batch(size)` and `on_work(audio_s, processing_s)` report figures for metrics;
    `free_memory()` returns free accelerator bytes (None when unknown) for batch sizing.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        device: str,
        compute_type: str,
        *,
        queue: WorkQueue | None = None,
        max_batch_size: int = 16,
        long_form_min_s: float = longform.LONG_FORM_MIN_S,
        vad: VadParams | None = None,
        free_memory: Callable[[], int | None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_work: Callable[[float, float], None] | None = None,
        pipeline_factory: Callable[[object], object] | None = None,
        detect_speech: Callable[[np.ndarray], list[tuple[float, float]]] | None = None,
        quiet_gain: bool = True,
    ):
        self.registry = registry
        self.device = device
        self.compute_type = compute_type
        self.queue = queue
        self.max_batch_size = max_batch_size
        self.long_form_min_s = long_form_min_s
        self.vad = vad or VadParams()
        self._free_memory = free_memory or (lambda: None)
        self._on_batch = on_batch or (lambda size: None)
        self._on_work = on_work or (lambda audio_s, processing_s: None)
        self._pipeline_factory = pipeline_factory or _batched_pipeline
        self._detect = detect_speech or self._detect_speech
        self.quiet_gain = quiet_gain

    def warm_up(self, name: str = "") -> None:
        """Load a model and run it once on a second of audio (first calls are slow)."""
        with self.registry.lease(name, self.device, self.compute_type) as model:
            phase = np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE
            tone = (0.1 * np.sin(phase)).astype(np.float32)
            segments, _ = model.transcribe(
                tone, language="pt", beam_size=1, vad_filter=False, temperature=0.0
            )
            list(segments)

    def speech_tracker(self) -> longform.SpeechTracker:
        """VAD for audio that arrives in pieces, with this transcriber's detector and settings
        (what the long-form path uses); see `longform.SpeechTracker`."""
        return longform.SpeechTracker(self._detect)

    def validate(self, options: TranscriptionOptions) -> None:
        """Refuse options that can never run (bad values, unknown model) before any work or wait."""
        resolve(options, 0.0, self.long_form_min_s, self.max_batch_size)
        self.registry.resolve(options.model)

    def admission(
        self, cancel: threading.Event | None = None, timeout: float | None = None
    ) -> AbstractContextManager[float]:
        """A worker slot from the queue (yields seconds waited); see `WorkQueue.slot`.

        The servicer takes it as soon as a request's config arrives, reads the audio inside it
        and passes the wait to `transcribe(queue_wait=...)`.
        """
        return self.queue.slot(cancel, timeout) if self.queue else nullcontext(0.0)

    def transcribe(
        self, audio: np.ndarray, options: TranscriptionOptions, *, queue_wait: float | None = None
    ) -> Iterator[ProgressUpdate | Segment | TranscriptionSummary]:
        """Decode `audio`; with `queue_wait` None a worker slot is taken here first, otherwise
        the caller already holds one (see `admission`) and waited `queue_wait` seconds for it."""
        duration = len(audio) / SAMPLE_RATE
        decoding = resolve(options, duration, self.long_form_min_s, self.max_batch_size)
        spec = self.registry.resolve(options.model)
        slot = self.admission() if queue_wait is None else nullcontext(queue_wait)
        with (
            slot as waited,
            self.registry.lease(spec.name, self.device, self.compute_type) as model,
        ):
            supported = getattr(model, "supported_languages", None)
            if decoding.language and supported and decoding.language not in supported:
                raise InvalidInput(
                    f"language {options.language_code!r} is not supported by model {spec.name!r}",
                    field="config.language_code",
                )
            started = time.perf_counter()
            stats = _Stats(language=decoding.language or "")
            with tracer.start_as_current_span("transcription.decode") as span:
                span.set_attributes(
                    {
                        "asr.audio.duration_s": duration,
                        "asr.model": spec.name,
                        "asr.device": self.device,
                        "asr.compute_type": self.compute_type,
                        "asr.queue_wait_s": waited,
                        "asr.profile": decoding.profile,
                        "asr.strategy": decoding.strategy,
                    }
                )
                yield ProgressUpdate(0.0, 0.0, duration, message=f"transcribing with {spec.name}")
                count = 0
                if len(audio) > 0 and decoding.vad_filter:
                    with tracer.start_as_current_span("transcription.vad") as vad_span:
                        audio = self._level(audio, stats)
                        assert stats.speech is not None  # _level always sets it
                        if stats.gain_db:
                            span.set_attribute("asr.gain_db", stats.gain_db)
                        vad_span.set_attributes(
                            {
                                "asr.audio.duration_s": duration,
                                "asr.vad.speech_ranges": len(stats.speech),
                                "asr.vad.speech_s": sum(b - a for a, b in stats.speech),
                            }
                        )
                if len(audio) > 0:
                    run = {
                        SEQUENTIAL: self._sequential,
                        BATCHED: self._batched,
                        LOCKSTEP: self._lockstep,
                    }[decoding.strategy]
                    for event in run(model, audio, decoding, stats, started):
                        if isinstance(event, Segment):
                            if stats.invented_segment(event):
                                continue
                            for segment in stats.loops.push(event):
                                yield _renumber(segment, count)
                                count += 1
                        else:
                            span.add_event(
                                "progress",
                                {
                                    "asr.fraction": event.fraction,
                                    "asr.audio_done_s": event.audio_processed,
                                    "asr.eta_s": event.eta,
                                },
                            )
                            yield event
                    for segment in stats.loops.flush():
                        yield _renumber(segment, count)
                        count += 1
                elapsed = time.perf_counter() - started
                span.set_attributes(
                    {
                        "asr.rtf": elapsed / duration if duration else 0.0,
                        "asr.batch_size": stats.batch_size,
                        "asr.segments": count,
                        "asr.vad_fallback": stats.vad_fallback,
                        "asr.redecoded_windows": stats.redecoded,
                        "asr.tail_batches": stats.tails,
                        "asr.repetitions_removed": stats.loops.removed,
                        "asr.invented_removed": stats.invented,
                    }
                )
            self._on_work(duration, elapsed)
            yield ProgressUpdate(1.0, duration, duration, message="transcription done")
            yield TranscriptionSummary(
                language_code=options.language_code if decoding.language else stats.language,
                language_probability=stats.language_probability,
                audio_duration=duration,
                model=spec.name,
                device=self.device,
                compute_type=self.compute_type,
                processing_seconds=elapsed,
                segment_count=count,
                profile=decoding.profile,
                strategy=decoding.strategy,
                batch_size=stats.batch_size,
                queue_wait_seconds=waited,
                vad_fallback=stats.vad_fallback,
                redecoded_windows=stats.redecoded,
                repetitions_removed=stats.loops.removed,
                invented_removed=stats.invented,
            )

    def _level(self, audio: np.ndarray, stats: _Stats) -> np.ndarray:
        """VAD speech ranges into `stats.speech`; quiet speech brought up first (`quiet_gain`).

        The gain is kept only when VAD hears speech in the louder audio: pure noise raised to a
        normal level must not become something for Whisper to transcribe.
        """
        gain = guards.quiet_gain(audio) if self.quiet_gain else 1.0
        if gain != 1.0:
            louder = guards.apply_gain(audio, gain)
            speech = longform.speech_ranges(louder, self._detect)
            if speech:
                stats.speech, stats.gain_db = speech, float(20 * np.log10(gain))
                return louder
        stats.speech = longform.speech_ranges(audio, self._detect)
        return audio

    # -- sequential: plain faster-whisper -------------------------------------------------

    def _sequential(
        self, model: Any, audio: np.ndarray, decoding: Decoding, stats: _Stats, started: float
    ) -> Iterator[ProgressUpdate | Segment]:
        samples = longform.to_float(audio)
        duration = len(samples) / SAMPLE_RATE
        emitted = 0
        for event in self._decode_sequential(
            model, samples, decoding, stats, started, decoding.vad_filter
        ):
            emitted += isinstance(event, Segment)
            yield event
        if emitted == 0 and decoding.vad_filter and guards.has_energy(samples):
            # VAD heard nothing, yet there is signal: quiet or unusual speech VAD misses.
            # Decode without VAD; the guards still drop what the model itself calls silence.
            with tracer.start_as_current_span("transcription.vad_fallback") as span:
                span.set_attribute("asr.audio.duration_s", duration)
                stats.vad_fallback = True
                yield from self._decode_sequential(
                    model, samples, decoding, stats, started, False, strict=True
                )

    def _decode_sequential(
        self,
        model: Any,
        samples: np.ndarray,
        decoding: Decoding,
        stats: _Stats,
        started: float,
        vad_filter: bool,
        strict: bool = False,
        window: Window | None = None,
        total: float | None = None,
    ) -> Iterator[ProgressUpdate | Segment]:
        duration = total or len(samples) / SAMPLE_RATE
        with tracer.start_as_current_span("transcription.window") as span:
            span.set_attributes(
                {
                    "asr.batch_size": 1,
                    "asr.window.start_s": window.start if window else 0.0,
                    "asr.window.duration_s": len(samples) / SAMPLE_RATE,
                }
            )
            raw_segments, info = model.transcribe(
                samples,
                vad_filter=vad_filter,
                temperature=list(decoding.temperatures),
                **decoding.whisper_kwargs(),
            )
            stats.language, stats.language_probability = info.language, info.language_probability
            for raw in raw_segments:
                segment = to_segment(0, raw, window.to_original if window else None)
                if guards.is_silent(segment) or (strict and not guards.is_confident(segment)):
                    continue
                yield segment
                done = min(segment.end, duration)
                yield _progress(done, duration, started)

    # -- lockstep: chunks decoded sequentially, their model calls batched --------------------

    def _lockstep(
        self, model: Any, audio: np.ndarray, decoding: Decoding, stats: _Stats, started: float
    ) -> Iterator[ProgressUpdate | Segment]:
        duration = len(audio) / SAMPLE_RATE
        speech = stats.speech if stats.speech is not None else [(0.0, duration)]
        streams = decoding.batch_size or longform.batch_size_for(
            duration, self.device, self._free_memory(), self.max_batch_size
        )
        chunks = lockstep.plan_chunks(speech, streams)
        if len(chunks) < 2:  # short or VAD heard nothing: plain sequential, with its fallback
            yield from self._sequential(model, audio, decoding, stats, started)
            return
        if decoding.language is None:
            first = longform.plan_windows(speech)[0].samples(audio)
            language, probability, _ = model.detect_language(first)
            decoding = _replace_language(decoding, language)
            stats.language, stats.language_probability = language, probability
        stats.batch_size = len(chunks)
        arrays = [
            longform.to_float(audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]) for a, b in chunks
        ]
        kwargs = dict(
            vad_filter=decoding.vad_filter,
            temperature=list(decoding.temperatures),
            **decoding.whisper_kwargs(),
        )
        with tracer.start_as_current_span("transcription.lockstep") as span:
            span.set_attributes({"asr.batch_size": len(chunks), "asr.audio.duration_s": duration})
            for index, raw in lockstep.transcribe_chunks(model, arrays, kwargs, self._on_batch):
                offset = chunks[index][0]

                def shift(t: float, offset: float = offset) -> float:
                    return offset + float(t)

                segment = to_segment(0, raw, shift)
                if guards.is_silent(segment):
                    continue
                yield segment
                yield _progress(min(segment.end, duration), duration, started)

    # -- batched: windows at silences, decoded together ---------------------------------------

    def _batched(
        self, model: Any, audio: np.ndarray, decoding: Decoding, stats: _Stats, started: float
    ) -> Iterator[ProgressUpdate | Segment]:
        duration = len(audio) / SAMPLE_RATE
        speech = stats.speech if stats.speech is not None else [(0.0, duration)]
        windows = longform.plan_windows(speech)
        if not windows and guards.has_energy(audio):
            stats.vad_fallback = True
            windows = longform.plan_windows([(0.0, duration)])
        if not windows:
            return
        if decoding.language is None:
            first = windows[0].samples(audio)
            language, probability, _ = model.detect_language(first)
            decoding = _replace_language(decoding, language)
            stats.language, stats.language_probability = language, probability
        size = decoding.batch_size or longform.batch_size_for(
            duration, self.device, self._free_memory(), self.max_batch_size
        )
        stats.batch_size = size
        pipeline = self._pipeline_factory(model)
        # Windows are planned a batch at a time from the speech still to decode, so speech a
        # window left undecoded (its tail) joins the next windows instead of costing its own.
        remaining = deque((a, b, 0) for a, b in longform.split_long(speech))
        held: list[Segment] = []
        while remaining:
            batch = self._next_batch(remaining, size)
            with tracer.start_as_current_span("transcription.batch") as span:
                batch_started = time.perf_counter()
                audio_s = sum(w.duration for w in batch)
                span.set_attributes(
                    {
                        "asr.batch_size": len(batch),
                        "asr.window.start_s": min(w.start for w in batch),
                        "asr.window.end_s": max(w.end for w in batch),
                        "asr.audio.duration_s": audio_s,
                    }
                )
                self._on_batch(len(batch))
                per_window = self._decode_batch(pipeline, audio, batch, decoding)
                left: list[tuple[float, float, int]] = []
                for window, (segments, failed) in zip(batch, per_window):
                    if failed or (stats.vad_fallback and not segments):
                        stats.redecoded += failed
                        segments = [
                            s
                            for s in self._decode_sequential(
                                model,
                                window.samples(audio),
                                decoding,
                                stats,
                                started,
                                False,
                                strict=stats.vad_fallback,
                                window=window,
                                total=duration,
                            )
                            if isinstance(s, Segment)
                        ]
                    elif window.attempt < longform.MAX_TAIL_ATTEMPTS:
                        rest = window.after(segments[-1].end if segments else window.start)
                        if sum(b - a for a, b in rest) >= longform.TAIL_MIN_S:
                            left.extend((a, b, window.attempt + 1) for a, b in rest)
                    held.extend(segments)
                stats.tails += bool(left)
                batch_s = time.perf_counter() - batch_started
                span.set_attributes(
                    {
                        "asr.rtf": batch_s / max(audio_s, 1e-6),
                        "asr.tail_s": sum(b - a for a, b, _ in left),
                    }
                )
            remaining.extendleft(reversed(sorted(left)))
            # Segments after speech that is still to decode wait, so they leave in time order.
            limit = min((a for a, _, _ in left), default=float("inf"))
            held.sort(key=lambda seg: seg.start)
            ready = [seg for seg in held if seg.start < limit]
            held = held[len(ready) :]
            yield from ready
            done = remaining[0][0] if remaining else duration
            yield _progress(min(done, duration), duration, started)

    @staticmethod
    def _next_batch(remaining: deque[tuple[float, float, int]], size: int) -> list[Window]:
        """Plan the next `size` windows from the front of the speech queue and pop their ranges."""
        take, speech = [], 0.0
        for item in remaining:
            if speech > (size + 1) * longform.WINDOW_S:
                break  # enough look-ahead for `size` full windows
            take.append(item)
            speech += item[1] - item[0]
        planned = longform.plan_windows([(a, b) for a, b, _ in take])
        planned = planned if len(take) == len(remaining) else planned[:size]
        planned = planned[:size]
        batch, k = [], 0
        for window in planned:
            n = len(window.pieces)
            attempt = max(item[2] for item in take[k : k + n])
            batch.append(Window(window.pieces, attempt))
            k += n
        for _ in range(k):
            remaining.popleft()
        return batch

    def _detect_speech(self, block: np.ndarray) -> list[tuple[float, float]]:
        from faster_whisper.vad import get_speech_timestamps

        found = get_speech_timestamps(block, self.vad.options(longform.WINDOW_S))
        return [(t["start"] / SAMPLE_RATE, t["end"] / SAMPLE_RATE) for t in found]

    def _decode_batch(
        self, pipeline: Any, audio: np.ndarray, batch: list[Window], decoding: Decoding
    ) -> list[tuple[list[Segment], bool]]:
        """Decode windows together; per window its segments and whether it looks failed."""
        parts = [w.samples(audio) for w in batch]
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]]) / SAMPLE_RATE
        clips = [
            {"start": float(o), "end": float(o) + len(p) / SAMPLE_RATE}
            for o, p in zip(offsets, parts)
        ]
        raw_segments, _ = pipeline.transcribe(
            np.concatenate(parts),
            clip_timestamps=clips,
            without_timestamps=False,
            vad_filter=False,
            batch_size=len(batch),
            temperature=decoding.temperatures[0],
            **{**decoding.whisper_kwargs(), "beam_size": decoding.batched_beam_size},
        )
        grouped: list[list[Any]] = [[] for _ in batch]
        for raw in raw_segments:
            clip_start = raw.seek / 100.0  # seek is the clip's offset in 10 ms frames
            index = min(range(len(batch)), key=lambda k: abs(clips[k]["start"] - clip_start))
            grouped[index].append(raw)
        out: list[tuple[list[Segment], bool]] = []
        for window, clip, raws in zip(batch, clips, grouped):
            if not raws:
                out.append(([], False))
                continue
            text = " ".join(r.text for r in raws)
            head = raws[0]

            def to_file(t: float, window: Window = window, clip: dict[str, float] = clip) -> float:
                return window.to_original(t - clip["start"])

            segments = [to_segment(0, r, to_file) for r in raws]
            if guards.is_silent(segments[0]):
                out.append(([], False))
                continue
            failed = guards.is_failed_window(
                head.avg_logprob, _compression_ratio(text), head.no_speech_prob
            )
            out.append((segments, failed and len(decoding.temperatures) > 1))
        return out


def _batched_pipeline(model: Any) -> Any:
    from faster_whisper import BatchedInferencePipeline

    return BatchedInferencePipeline(model)


def _compression_ratio(text: str) -> float:
    from faster_whisper.transcribe import get_compression_ratio

    return get_compression_ratio(text) if text.strip() else 0.0


def _replace_language(decoding: Decoding, language: str) -> Decoding:
    from dataclasses import replace

    return replace(decoding, language=language)


def _progress(done: float, duration: float, started: float) -> ProgressUpdate:
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    return ProgressUpdate(
        fraction=done / duration if duration else 1.0,
        audio_processed=done,
        audio_total=duration,
        eta=(duration - done) / rate if rate > 0 else 0.0,
    )


def _renumber(segment: Segment, index: int) -> Segment:
    from dataclasses import replace

    return segment if segment.id == index else replace(segment, id=index)


def to_segment(index: int, raw: Any, to_file: Callable[[float], float] | None = None) -> Segment:
    """faster-whisper Segment → domain Segment (NFC text, words without the leading space).

    `to_file` maps times of a decoded window back to the file (long-form windows)."""
    at = to_file or float
    words = tuple(
        Word(
            start=at(float(w.start)),
            end=at(float(w.end)),
            word=unicodedata.normalize("NFC", w.word.strip()),
            probability=float(w.probability),
        )
        for w in (raw.words or ())
    )
    return Segment(
        id=index,
        start=at(float(raw.start)),
        end=at(float(raw.end)),
        text=unicodedata.normalize("NFC", raw.text.strip()),
        words=words,
        avg_logprob=float(raw.avg_logprob),
        no_speech_prob=float(raw.no_speech_prob),
        compression_ratio=float(raw.compression_ratio),
    )


def auto_device(requested: str) -> str:
    """ "auto" → "cuda" when CTranslate2 sees a GPU, else "cpu"."""
    if requested != "auto":
        return requested
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def auto_compute_type(requested: str, device: str) -> str:
    """ "auto" → float16 on CUDA, int8 on CPU."""
    if requested != "auto":
        return requested
    return "float16" if device == "cuda" else "int8"


def cuda_free_bytes(device: str) -> int | None:
    """Free memory on the current CUDA device, or None (CPU, or no way to ask)."""
    if device != "cuda":
        return None
    try:
        import ctypes

        cudart = ctypes.CDLL("libcudart.so")
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value)
    except OSError:
        pass
    return None
