"""Thin gRPC layer over the diarization core: proto ↔ domain, nothing else."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from opentelemetry import trace

from asr.common.v1 import progress_pb2
from asr.diarization.v1 import diarization_service_pb2 as pb
from asr.diarization.v1 import diarization_service_pb2_grpc as pb_grpc
from services.common import convert
from services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE, ProgressUpdate
from services.common.errors import InvalidInput, LimitExceeded
from services.common.pcm import check_format, pcm_duration, pcm_to_float32
from services.diarization.core import DiarizationOptions, DiarizationOutcome, Diarizer

STAGE = progress_pb2.STAGE_DIARIZATION


def read_config_and_pcm(request_iterator, max_audio_seconds: float) -> tuple[pb.DiarizationConfig, bytearray]:
    """Read the config message and the PCM chunks that follow it from a request stream."""
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("payload") != "config":
        raise InvalidInput("the first message of the stream must carry config", field="config")
    config = first.config
    check_format(config.format.sample_rate_hz, config.format.channels, config.format.encoding)
    pcm = bytearray()
    limit = int(max_audio_seconds * SAMPLE_RATE * BYTES_PER_SAMPLE)
    for request in request_iterator:
        if request.WhichOneof("payload") != "audio":
            raise InvalidInput("config may appear only once, as the first message", field="config")
        pcm += request.audio.pcm
        if len(pcm) > limit:
            raise LimitExceeded(
                f"audio is longer than this service's limit of {max_audio_seconds:.0f} s",
                metadata={"limit_seconds": str(max_audio_seconds)},
            )
    return config, pcm  # not bytes(pcm): an hour would be held twice for a moment


class DiarizationServicer(pb_grpc.DiarizationServiceServicer):
    def __init__(self, diarizer: Diarizer, max_audio_seconds: float):
        self._diarizer = diarizer
        self._max_audio_seconds = max_audio_seconds

    def Diarize(self, request_iterator, context: grpc.ServicerContext) -> Iterator[pb.DiarizeResponse]:
        config, pcm = read_config_and_pcm(request_iterator, self._max_audio_seconds)
        options = DiarizationOptions(
            num_speakers=config.num_speakers,
            min_speakers=config.min_speakers,
            max_speakers=config.max_speakers,
        )
        span = trace.get_current_span()
        span.set_attribute("asr.audio.duration_s", pcm_duration(len(pcm)))
        audio = pcm_to_float32(pcm)
        del pcm  # an hour of 16-bit PCM is 115 MB; keep only the float copy the backend needs
        cancel = threading.Event()
        context.add_callback(cancel.set)  # caller gone or RPC over: the worker stops soon
        for event in self._diarizer.diarize(audio, options, cancel):
            if isinstance(event, ProgressUpdate):
                yield pb.DiarizeResponse(progress=convert.progress_to_proto(STAGE, event))
            elif isinstance(event, DiarizationOutcome):
                rtf = event.processing_seconds / event.audio_duration if event.audio_duration else 0.0
                span.set_attributes({"asr.diarization.backend": event.backend, "asr.rtf": rtf,
                                     "asr.diarization.speakers": event.speaker_count})
                yield pb.DiarizeResponse(result=pb.DiarizationResult(
                    exclusive_turns=[convert.turn_to_proto(t) for t in event.exclusive_turns],
                    overlaps=[convert.range_to_proto(r) for r in event.overlaps],
                    speaker_count=event.speaker_count,
                    backend=event.backend,
                    audio_duration=convert.duration(event.audio_duration),
                    processing_duration=convert.duration(event.processing_seconds),
                ))
