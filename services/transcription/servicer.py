"""Thin gRPC layer over the transcription core: proto ↔ domain, nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
from opentelemetry import trace

from asr.common.v1 import progress_pb2
from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from services.common import convert
from services.common.domain import ProgressUpdate, Segment
from services.common.errors import InvalidAudio, InvalidInput, LimitExceeded
from services.common.pcm import check_format, pcm_duration
from services.transcription.core import Transcriber, TranscriptionOptions, TranscriptionSummary

STAGE = progress_pb2.STAGE_TRANSCRIPTION
PROFILE_NAMES = {
    pb.QUALITY_PROFILE_UNSPECIFIED: "",
    pb.QUALITY_PROFILE_MAX_QUALITY: "max_quality",
    pb.QUALITY_PROFILE_BALANCED: "balanced",
    pb.QUALITY_PROFILE_FAST: "fast",
}
STRATEGY_NAMES = {
    pb.LONG_FORM_STRATEGY_UNSPECIFIED: "",
    pb.LONG_FORM_STRATEGY_SEQUENTIAL: "sequential",
    pb.LONG_FORM_STRATEGY_BATCHED: "batched",
}


def options_from_config(config: pb.TranscriptionConfig) -> TranscriptionOptions:
    """TranscriptionConfig → core options (zero values mean "the profile's")."""
    if config.profile not in PROFILE_NAMES:
        raise InvalidInput(f"unknown quality profile {config.profile}", field="config.profile")
    if config.strategy not in STRATEGY_NAMES:
        raise InvalidInput(f"unknown long-form strategy {config.strategy}", field="config.strategy")
    return TranscriptionOptions(
        language_code=config.language_code or TranscriptionOptions.language_code,
        model=config.model,
        profile=PROFILE_NAMES[config.profile] or TranscriptionOptions.profile,
        beam_size=config.beam_size,
        best_of=config.best_of,
        temperatures=tuple(config.temperatures),
        word_timestamps=not config.disable_word_timestamps,
        vad_filter=not config.disable_vad,
        initial_prompt=config.initial_prompt,
        hotwords=config.hotwords,
        strategy=STRATEGY_NAMES[config.strategy],
        batch_size=config.batch_size,
    )


def pcm_samples(pcm: bytes | bytearray) -> np.ndarray:
    """s16le bytes → int16 samples without a copy (the core converts window by window)."""
    if len(pcm) % 2:
        raise InvalidAudio("PCM stream ends in the middle of a sample (odd byte count)")
    return np.frombuffer(pcm, dtype="<i2")


def read_config_and_pcm(request_iterator, max_audio_seconds: float, config_field: str = "config"):
    """Read the config message and the PCM that follows it from a request stream."""
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("payload") != config_field:
        raise InvalidInput(f"the first message of the stream must carry {config_field}", field=config_field)
    config = getattr(first, config_field)
    fmt = config.format
    check_format(fmt.sample_rate_hz, fmt.channels, fmt.encoding)
    pcm = bytearray()
    limit = int(max_audio_seconds * 32_000)
    for request in request_iterator:
        if request.WhichOneof("payload") != "audio":
            raise InvalidInput(f"{config_field} may appear only once, as the first message", field=config_field)
        pcm += request.audio.pcm
        if len(pcm) > limit:
            raise LimitExceeded(
                f"audio is longer than this service's limit of {max_audio_seconds:.0f} s",
                metadata={"limit_seconds": str(max_audio_seconds)},
            )
    return config, pcm


class TranscriptionServicer(pb_grpc.TranscriptionServiceServicer):
    def __init__(self, transcriber: Transcriber, max_audio_seconds: float):
        self._transcriber = transcriber
        self._max_audio_seconds = max_audio_seconds

    def Transcribe(self, request_iterator, context: grpc.ServicerContext) -> Iterator[pb.TranscribeResponse]:
        config, pcm = read_config_and_pcm(request_iterator, self._max_audio_seconds)
        options = options_from_config(config)
        span = trace.get_current_span()
        span.set_attribute("asr.audio.duration_s", pcm_duration(len(pcm)))
        for event in self._transcriber.transcribe(pcm_samples(pcm), options):
            if isinstance(event, Segment):
                yield pb.TranscribeResponse(segment=convert.segment_to_proto(event))
            elif isinstance(event, ProgressUpdate):
                yield pb.TranscribeResponse(progress=convert.progress_to_proto(STAGE, event))
            elif isinstance(event, TranscriptionSummary):
                rtf = event.processing_seconds / event.audio_duration if event.audio_duration else 0.0
                span.set_attributes({
                    "asr.model": event.model, "asr.device": event.device,
                    "asr.compute_type": event.compute_type, "asr.rtf": rtf,
                    "asr.segments": event.segment_count, "asr.batch_size": event.batch_size,
                    "asr.queue_wait_s": event.queue_wait_seconds, "asr.profile": event.profile,
                })
                yield pb.TranscribeResponse(result=pb.TranscriptionResult(
                    language_code=event.language_code,
                    language_probability=event.language_probability,
                    audio_duration=convert.duration(event.audio_duration),
                    model=event.model, device=event.device, compute_type=event.compute_type,
                    processing_duration=convert.duration(event.processing_seconds),
                    segment_count=event.segment_count,
                    profile=event.profile, strategy=event.strategy, batch_size=event.batch_size,
                    queue_wait=convert.duration(event.queue_wait_seconds),
                    vad_fallback=event.vad_fallback, redecoded_windows=event.redecoded_windows,
                    repetitions_removed=event.repetitions_removed,
                ))

    def ListModels(self, request, context) -> pb.ListModelsResponse:
        registry = self._transcriber.registry
        default = registry.resolve("").path
        return pb.ListModelsResponse(models=[
            pb.ModelInfo(
                name=name,
                loaded=registry.is_loaded(name),
                is_default=registry.resolve(name).path == default,
            )
            for name in registry.names()
        ])

