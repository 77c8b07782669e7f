"""gRPC side of TranscriptionService.StreamingTranscribe: proto ↔ the streaming core.

A session holds one server thread (this generator) and one reader thread that hands the
caller's audio to the core through an `Inbox`, so decoding goes on while audio arrives. The
model is the registry's shared instance, leased for the session (batch requests use the same
one; CTranslate2 serialises the calls). On CPU, the beam-search decodes of a profile that
has them (`accurate`'s closing decodes, and then its rescues) run on a second instance with
`beam_threads` threads and two workers per session (`TranscriptionSettings.stream_beam_threads`;
`accurate` runs two closing decodes at once, `LatencyProfile.second_context_s`), loaded by the
first such session. Sessions do not take batch worker slots: a streaming
step cannot wait behind an hour-long file; their number is bounded per replica instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext

import numpy as np
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from asr.common.v1 import streaming_pb2 as spb
from asr.transcription.v1 import streaming_pb2 as pb
from asr_mesh.services.common import convert, metrics
from asr_mesh.services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE
from asr_mesh.services.common.errors import Cancelled, InvalidAudio, InvalidInput, MeshError
from asr_mesh.services.common.options import streaming_config
from asr_mesh.services.common.pcm import read_config
from asr_mesh.services.transcription import streaming
from asr_mesh.services.transcription.core import Transcriber, whisper_language
from asr_mesh.services.transcription.streaming import (
    Final,
    Inbox,
    Interim,
    SessionLimiter,
    SessionOptions,
    SpeechEvent,
    StreamingSession,
    StreamSummary,
    VadFn,
    closing_decoder,
    doubt_decoder,
    grid_decoder,
    rescue_decoder,
)

SESSIONS_ACTIVE = Gauge(
    "asr_streaming_sessions_active",
    "Streaming sessions open now.",
    ["service"],
    registry=metrics.REGISTRY,
)
FINAL_LATENCY = Histogram(
    "asr_streaming_final_latency_seconds",
    "Wall time from the arrival of the audio a final result ends at to the result being sent.",
    ["service", "profile"],
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
    registry=metrics.REGISTRY,
)
INTERIM_RESULTS = Counter(
    "asr_streaming_interim_results",
    "Interim results sent (rate: interim results per second).",
    ["service", "profile"],
    registry=metrics.REGISTRY,
)
FINAL_RESULTS = Counter(
    "asr_streaming_final_results",
    "Final results sent.",
    ["service", "profile"],
    registry=metrics.REGISTRY,
)
STREAM_ERRORS = Counter(
    "asr_streaming_errors",
    "Streaming sessions that ended in an error, by reason.",
    ["service", "reason"],
    registry=metrics.REGISTRY,
)

PROFILE_NAMES = {
    spb.LATENCY_PROFILE_UNSPECIFIED: "",
    spb.LATENCY_PROFILE_LOW_LATENCY: "low_latency",
    spb.LATENCY_PROFILE_BALANCED: "balanced",
    spb.LATENCY_PROFILE_ACCURATE: "accurate",
}
MAX_CHUNK_BYTES = int(streaming.MAX_CHUNK_S * SAMPLE_RATE) * BYTES_PER_SAMPLE


def session_options(config: spb.StreamingConfig) -> SessionOptions:
    """StreamingConfig → core options (validated later by `streaming.resolve_options`).

    Its shared `transcription` options, when set, replace the flat language/model/prompt
    fields (the same fold the gateway applies; batch-only options are refused)."""
    config = streaming_config(config)
    if config.latency_profile not in PROFILE_NAMES:
        raise InvalidInput(
            f"unknown latency profile {config.latency_profile}", field="config.latency_profile"
        )
    return SessionOptions(
        profile=PROFILE_NAMES[config.latency_profile] or streaming.DEFAULT_PROFILE,
        language=whisper_language(config.language_code),
        model=config.model,
        interim_results=config.interim_results,
        endpointing=not config.endpointing.disabled,
        endpoint_silence_s=convert.seconds(config.endpointing.silence),
        max_session_s=convert.seconds(config.max_session_duration),
        initial_prompt=config.initial_prompt,
    )


def event_to_proto(event) -> spb.StreamingEvent:
    if isinstance(event, Interim):
        return spb.StreamingEvent(
            interim=spb.StreamingInterimResult(
                text=event.text,
                stability=event.stability,
                start_offset=convert.duration(event.start),
                end_offset=convert.duration(event.end),
            )
        )
    if isinstance(event, Final):
        return spb.StreamingEvent(
            final=spb.StreamingFinalResult(
                segment=convert.segment_to_proto(event.segment),
                end_of_utterance=event.end_of_utterance,
            )
        )
    if isinstance(event, SpeechEvent):
        kind = (
            spb.SpeechEvent.KIND_SPEECH_BEGIN
            if event.kind == "begin"
            else spb.SpeechEvent.KIND_SPEECH_END
        )
        return spb.StreamingEvent(
            speech=spb.SpeechEvent(kind=kind, offset=convert.duration(event.offset))
        )
    if isinstance(event, StreamSummary):
        return spb.StreamingEvent(
            summary=spb.StreamingSummary(
                audio_duration=convert.duration(event.audio_duration),
                final_count=event.final_count,
                interim_count=event.interim_count,
                decode_steps=event.decode_steps,
                processing_duration=convert.duration(event.processing_seconds),
                model=event.model,
                latency_profile=event.profile,
                words_removed=event.words_removed,
            )
        )
    raise TypeError(f"not a streaming event: {event!r}")


def read_audio(request_iterator, inbox: Inbox) -> None:
    """Reader thread: hand every audio message to `inbox`; the end or an error too."""
    try:
        for request in request_iterator:
            if request.WhichOneof("payload") != "audio":
                raise InvalidInput(
                    "config may appear only once, as the first message of the stream",
                    field="config",
                )
            pcm = request.audio.pcm
            if len(pcm) % BYTES_PER_SAMPLE:
                raise InvalidAudio(
                    "an audio message holds an odd number of bytes; the PCM is 16-bit "
                    "(2 bytes a sample) and messages must hold whole samples"
                )
            if len(pcm) > MAX_CHUNK_BYTES:
                raise InvalidInput(
                    f"an audio message holds "
                    f"{len(pcm) / (SAMPLE_RATE * BYTES_PER_SAMPLE):.2f} s of audio; send at most "
                    f"{streaming.MAX_CHUNK_S:g} s a message (20-500 ms is usual)",
                    field="audio",
                )
            inbox.put(np.frombuffer(pcm, dtype="<i2"))
        inbox.close()
    except BaseException as exc:  # noqa: BLE001 - raised on the session's thread by Inbox.take
        inbox.fail(exc)


class StreamingHandler:
    """Runs TranscriptionService.StreamingTranscribe for the servicer."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        max_sessions: int,
        max_session_s: float,
        idle_timeout_s: float,
        vad_factory: Callable[[], VadFn] = streaming.silero_vad,
        service: str = "transcription",
        beam_threads: int = 0,
        rover_contexts_s: Sequence[float] = (),
    ):
        self._transcriber = transcriber
        self._rover_contexts_s = tuple(rover_contexts_s)
        self._beam_threads = beam_threads if transcriber.device == "cpu" else 0
        self._service = service
        self.limiter = SessionLimiter(
            max_sessions, on_change=lambda n: SESSIONS_ACTIVE.labels(service).set(n)
        )
        SESSIONS_ACTIVE.labels(service).set(0)
        self._max_session_s = max_session_s
        self._idle_timeout_s = idle_timeout_s
        self._vad_factory = vad_factory

    def __call__(self, request_iterator, context) -> Iterator[pb.StreamingTranscribeResponse]:
        try:
            yield from self._session(request_iterator, context)
        except MeshError as exc:
            STREAM_ERRORS.labels(self._service, exc.reason).inc()
            raise
        except Exception:
            STREAM_ERRORS.labels(self._service, "INTERNAL").inc()
            raise

    def _session(self, request_iterator, context) -> Iterator[pb.StreamingTranscribeResponse]:
        config = read_config(request_iterator)
        options, profile = streaming.resolve_options(session_options(config), self._max_session_s)
        profile = streaming.with_rover(profile, self._rover_contexts_s)
        registry = self._transcriber.registry
        spec = registry.resolve(options.model)
        span = trace.get_current_span()
        span.set_attributes(
            {
                "asr.model": spec.name,
                "asr.stream.profile": profile.name,
                "asr.stream.interim_results": options.interim_results,
                "asr.stream.endpoint_silence_s": options.endpoint_silence_s,
                "asr.stream.rover_contexts_s": profile.rover_contexts_s,
            }
        )
        device, compute_type = self._transcriber.device, self._transcriber.compute_type
        beam_threads = self._beam_threads if profile.searches_beams else 0
        with (
            self.limiter,
            registry.lease(spec.name, device, compute_type) as model,
            registry.lease(spec.name, device, compute_type, beam_threads)
            if beam_threads
            else nullcontext(model) as beam_model,
        ):
            supported = getattr(model, "supported_languages", None)
            if supported and options.language not in supported:
                raise InvalidInput(
                    f"language {config.language_code!r} is not supported by model {spec.name!r}",
                    field="config.language_code",
                )
            inbox = Inbox()
            if not context.add_callback(inbox.cancel):
                raise Cancelled("the caller cancelled the streaming session before it started")
            reader = threading.Thread(
                target=read_audio, args=(request_iterator, inbox), name="stream-reader", daemon=True
            )
            reader.start()
            session = StreamingSession(
                grid_decoder(model, options.language, profile, beam_model),
                self._vad_factory(),
                options,
                profile,
                model_name=spec.name,
                rescue=rescue_decoder(beam_model, options.language),
                closing=closing_decoder(model, options.language, profile, beam_model),
                doubt=doubt_decoder(beam_model, options.language, profile),
            )
            try:
                for emitted in streaming.drive(session, inbox, self._idle_timeout_s):
                    event = emitted.event
                    if isinstance(event, Interim):
                        INTERIM_RESULTS.labels(self._service, profile.name).inc()
                    elif isinstance(event, Final):
                        FINAL_RESULTS.labels(self._service, profile.name).inc()
                        if emitted.audio_arrived_at is not None:
                            FINAL_LATENCY.labels(self._service, profile.name).observe(
                                max(0.0, time.monotonic() - emitted.audio_arrived_at)
                            )
                    elif isinstance(event, StreamSummary):
                        span.set_attributes(
                            {
                                "asr.audio.duration_s": event.audio_duration,
                                "asr.stream.finals": event.final_count,
                                "asr.stream.interims": event.interim_count,
                                "asr.stream.steps": event.decode_steps,
                                "asr.rtf": event.processing_seconds
                                / max(event.audio_duration, 1e-6),
                            }
                        )
                        metrics.record_work(
                            self._service, event.audio_duration, event.processing_seconds
                        )
                    yield pb.StreamingTranscribeResponse(event=event_to_proto(event))
            finally:
                inbox.cancel()  # a reader still blocked ends when the RPC does
