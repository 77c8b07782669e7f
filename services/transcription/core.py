"""Speech recognition with faster-whisper. Pure: no gRPC, no environment reads.

`Transcriber.transcribe` takes float32 16 kHz mono audio and yields progress updates and
domain `Segment`s as faster-whisper decodes them, then one `TranscriptionSummary`.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from services.common.domain import SAMPLE_RATE, ProgressUpdate, Segment, Word
from services.common.errors import InvalidInput
from services.transcription.models import ModelRegistry

DEFAULT_LANGUAGE = "pt-BR"
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""faster-whisper's own fallback schedule; sampling above 0 makes output vary run to run."""


@dataclass(frozen=True)
class TranscriptionOptions:
    """What a caller may choose per request."""

    language_code: str = DEFAULT_LANGUAGE
    model: str = ""
    beam_size: int = 5
    word_timestamps: bool = True
    vad_filter: bool = True
    initial_prompt: str = ""
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES


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


def whisper_language(language_code: str) -> str | None:
    """BCP-47 → Whisper's language code: "pt-BR" → "pt"; "auto" → None (detect)."""
    code = (language_code or DEFAULT_LANGUAGE).strip()
    if code.lower() == "auto":
        return None
    primary = code.replace("_", "-").split("-")[0].lower()
    if not primary.isalpha() or len(primary) not in (2, 3):
        raise InvalidInput(f"language_code {language_code!r} is not a BCP-47 tag", field="config.language_code")
    return primary


class Transcriber:
    """Runs faster-whisper models from a registry on one device/compute type."""

    def __init__(self, registry: ModelRegistry, device: str, compute_type: str):
        self.registry = registry
        self.device = device
        self.compute_type = compute_type

    def transcribe(
        self, audio: np.ndarray, options: TranscriptionOptions
    ) -> Iterator[ProgressUpdate | Segment | TranscriptionSummary]:
        if any(t < 0 or t > 2 for t in options.temperatures) or not options.temperatures:
            raise InvalidInput("temperatures must be between 0 and 2", field="config.temperatures")
        spec = self.registry.resolve(options.model)
        language = whisper_language(options.language_code)
        model = self.registry.get(spec.name, self.device, self.compute_type)
        supported = getattr(model, "supported_languages", None)
        if language and supported and language not in supported:
            raise InvalidInput(
                f"language {options.language_code!r} is not supported by model {spec.name!r}",
                field="config.language_code",
            )
        duration = len(audio) / SAMPLE_RATE
        started = time.perf_counter()
        yield ProgressUpdate(0.0, 0.0, duration, message=f"transcribing with {spec.name}")
        count = 0
        info_language, info_probability = language or "", 1.0
        if len(audio) > 0:
            segments, info = model.transcribe(
                audio,
                language=language,
                beam_size=options.beam_size,
                word_timestamps=options.word_timestamps,
                vad_filter=options.vad_filter,
                initial_prompt=options.initial_prompt or None,
                temperature=list(options.temperatures),
            )
            info_language, info_probability = info.language, info.language_probability
            for raw in segments:
                yield to_segment(count, raw)
                count += 1
                elapsed = time.perf_counter() - started
                done = min(raw.end, duration)
                rate = done / elapsed if elapsed > 0 else 0.0
                yield ProgressUpdate(
                    fraction=done / duration if duration else 1.0,
                    audio_processed=done,
                    audio_total=duration,
                    eta=(duration - done) / rate if rate > 0 else 0.0,
                )
        yield ProgressUpdate(1.0, duration, duration, message="transcription done")
        yield TranscriptionSummary(
            language_code=options.language_code if language else info_language,
            language_probability=info_probability,
            audio_duration=duration,
            model=spec.name,
            device=self.device,
            compute_type=self.compute_type,
            processing_seconds=time.perf_counter() - started,
            segment_count=count,
        )


def to_segment(index: int, raw) -> Segment:
    """faster-whisper Segment → domain Segment (NFC text, words without the leading space)."""
    words = tuple(
        Word(
            start=float(w.start),
            end=float(w.end),
            word=unicodedata.normalize("NFC", w.word.strip()),
            probability=float(w.probability),
        )
        for w in (raw.words or ())
    )
    return Segment(
        id=index,
        start=float(raw.start),
        end=float(raw.end),
        text=unicodedata.normalize("NFC", raw.text.strip()),
        words=words,
        avg_logprob=float(raw.avg_logprob),
        no_speech_prob=float(raw.no_speech_prob),
        compression_ratio=float(raw.compression_ratio),
    )


def auto_device(requested: str) -> str:
    """"auto" → "cuda" when CTranslate2 sees a GPU, else "cpu"."""
    if requested != "auto":
        return requested
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def auto_compute_type(requested: str, device: str) -> str:
    """"auto" → float16 on CUDA, int8 on CPU."""
    if requested != "auto":
        return requested
    return "float16" if device == "cuda" else "int8"
