"""Thin gRPC layer over the transcription core: proto ↔ domain, nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from opentelemetry import trace

from asr.common.v1 import progress_pb2
from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import ProgressUpdate, Segment, TimeRange
from asr_mesh.services.common.errors import InvalidInput
from asr_mesh.services.common.options import PROFILE_NAMES
from asr_mesh.services.common.pcm import (
    pcm_duration,
    pcm_pieces,
    pcm_samples,
    read_config,
    read_pcm,
)
from asr_mesh.services.common.scheduler import rpc_watch
from asr_mesh.services.common.streams import UploadMeter
from asr_mesh.services.transcription.core import (
    Transcriber,
    TranscriptionOptions,
    TranscriptionSummary,
)
from asr_mesh.services.transcription.models import weights_sha256

STAGE = progress_pb2.STAGE_TRANSCRIPTION
STRATEGY_NAMES = {
    pb.LONG_FORM_STRATEGY_UNSPECIFIED: "",
    pb.LONG_FORM_STRATEGY_SEQUENTIAL: "sequential",
    pb.LONG_FORM_STRATEGY_BATCHED: "batched",
    pb.LONG_FORM_STRATEGY_LOCKSTEP: "lockstep",
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


class TranscriptionServicer(pb_grpc.TranscriptionServiceServicer):
    def __init__(self, transcriber: Transcriber, max_audio_seconds: float, streaming=None):
        self._transcriber = transcriber
        self._max_audio_seconds = max_audio_seconds
        self._streaming = streaming  # a stream_servicer.StreamingHandler

    def StreamingTranscribe(self, request_iterator, context):
        return self._streaming(request_iterator, context)

    def Transcribe(
        self, request_iterator, context: grpc.ServicerContext
    ) -> Iterator[pb.TranscribeResponse]:
        config = read_config(request_iterator)
        options = options_from_config(config)
        self._transcriber.validate(options)
        # Admission before the upload: a refused request is answered at once, and a waiting
        # one holds no audio. The slot covers reading the audio and decoding it.
        cancel, timeout = rpc_watch(context)
        meter = UploadMeter(
            config.pcm_size_bytes, cancel, what="audio stream", field="config.pcm_size_bytes"
        )
        with self._transcriber.admission(cancel, timeout) as waited:
            yield from self._transcribe(
                read_pcm(request_iterator, max_audio_seconds=self._max_audio_seconds, meter=meter),
                options,
                waited,
            )

    def _transcribe(
        self, pcm: bytearray, options: TranscriptionOptions, waited: float
    ) -> Iterator[pb.TranscribeResponse]:
        span = trace.get_current_span()
        span.set_attribute("asr.audio.duration_s", pcm_duration(len(pcm)))
        for event in self._transcriber.transcribe(pcm_samples(pcm), options, queue_wait=waited):
            if isinstance(event, Segment):
                yield pb.TranscribeResponse(segment=convert.segment_to_proto(event))
            elif isinstance(event, ProgressUpdate):
                yield pb.TranscribeResponse(progress=convert.progress_to_proto(STAGE, event))
            elif isinstance(event, TranscriptionSummary):
                rtf = (
                    event.processing_seconds / event.audio_duration if event.audio_duration else 0.0
                )
                span.set_attributes(
                    {
                        "asr.model": event.model,
                        "asr.device": event.device,
                        "asr.compute_type": event.compute_type,
                        "asr.rtf": rtf,
                        "asr.segments": event.segment_count,
                        "asr.batch_size": event.batch_size,
                        "asr.queue_wait_s": event.queue_wait_seconds,
                        "asr.profile": event.profile,
                    }
                )
                yield pb.TranscribeResponse(
                    result=pb.TranscriptionResult(
                        language_code=event.language_code,
                        language_probability=event.language_probability,
                        audio_duration=convert.duration(event.audio_duration),
                        model=event.model,
                        device=event.device,
                        compute_type=event.compute_type,
                        processing_duration=convert.duration(event.processing_seconds),
                        segment_count=event.segment_count,
                        profile=event.profile,
                        strategy=event.strategy,
                        batch_size=event.batch_size,
                        queue_wait=convert.duration(event.queue_wait_seconds),
                        vad_fallback=event.vad_fallback,
                        redecoded_windows=event.redecoded_windows,
                        repetitions_removed=event.repetitions_removed,
                    )
                )

    def DetectSpeech(
        self, request_iterator, context: grpc.ServicerContext
    ) -> Iterator[pb.DetectSpeechResponse]:
        """Speech ranges as the audio streams in (the gateway plans fan-out cuts from them).

        No decoding slot: VAD is a small fraction of decoding's cost, and a planner waiting
        behind the decodes it is about to plan would only delay them."""
        config = read_config(request_iterator)
        cancel, _ = rpc_watch(context)
        meter = UploadMeter(
            config.pcm_size_bytes, cancel, what="audio stream", field="config.pcm_size_bytes"
        )
        tracker = self._transcriber.speech_tracker()
        reported = 0.0
        tracer = trace.get_tracer(__name__)
        with tracer.start_as_current_span("transcription.detect_speech") as span:
            for piece in pcm_pieces(
                request_iterator, max_audio_seconds=self._max_audio_seconds, meter=meter
            ):
                found = tracker.push(pcm_samples(piece))
                if found or tracker.processed > reported:
                    reported = tracker.processed
                    yield _speech_response(found, reported)
            found = tracker.finish()
            span.set_attributes({"asr.audio.duration_s": tracker.processed})
            yield _speech_response(found, tracker.processed, done=True)

    def ListModels(self, request, context) -> pb.ListModelsResponse:
        registry = self._transcriber.registry
        default = registry.resolve("").path  # a missing default is a server fault (INTERNAL)
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=name,
                    loaded=registry.is_loaded(name),
                    is_default=registry.resolve(name).path == default,
                    weights_sha256=weights_sha256(registry.resolve(name).path),
                )
                for name in registry.names()
            ]
        )


def _speech_response(
    ranges: list[tuple[float, float]], processed: float, done: bool = False
) -> pb.DetectSpeechResponse:
    return pb.DetectSpeechResponse(
        ranges=[convert.range_to_proto(TimeRange(a, b)) for a, b in ranges],
        audio_processed=convert.duration(processed),
        done=done,
    )
