"""Transcription service: settings, `create_server` factory and `main()`."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import metrics
from asr_mesh.services.common.metrics import gauge_reporter
from asr_mesh.services.common.scheduler import WorkQueue
from asr_mesh.services.common.server import ServerHandle, build_server, run_service
from asr_mesh.services.common.settings import QueuedServerSettings
from asr_mesh.services.transcription.core import (
    Transcriber,
    auto_compute_type,
    auto_device,
    cuda_free_bytes,
)
from asr_mesh.services.transcription.longform import LONG_FORM_MIN_S, VadParams
from asr_mesh.services.transcription.models import ModelRegistry
from asr_mesh.services.transcription.servicer import TranscriptionServicer
from asr_mesh.services.transcription.stream_servicer import StreamingHandler
from asr_mesh.services.transcription.streaming import PROFILES, with_rover

SERVICE = "transcription"
log = logging.getLogger(__name__)

REPO_MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


class TranscriptionSettings(QueuedServerSettings):
    """Environment: ASR_TRANSCRIPTION_* (plus ASR_STATE_DIR and OTEL_*)."""

    model_config = SettingsConfigDict(env_prefix="ASR_TRANSCRIPTION_", extra="ignore")

    models_dir: Path = Field(REPO_MODELS_DIR, description="Directory of local model directories.")
    default_model: str = Field("base", description="Model used when a request names none.")
    device: str = Field("auto", description="cpu, cuda or auto.")
    compute_type: str = Field("auto", description="CTranslate2 compute type, or auto.")
    cpu_threads: int = Field(0, ge=0, description="Threads per model on CPU; 0 = all cores.")
    num_workers: int = Field(1, ge=1, description="CTranslate2 workers = requests decoded at once.")
    stream_beam_threads: int = Field(
        1,
        ge=0,
        description="On CPU, streaming sessions' beam-search decodes (accurate's closing "
        "decodes, rescues) run on a second instance of the model with this many threads and "
        "workers for every session's decodes at once (max_streams x 2); 0 = on the shared "
        "instance. On 2 cores whisper "
        "base decodes beam 5 faster on one thread than on two (benchmarks/README.md).",
    )
    stream_rover_contexts: tuple[float, ...] = Field(
        (),
        description="Streaming `accurate` sessions run their closing decodes also after only "
        "these many seconds of earlier speech (0 = the phrase alone), all at once, and combine "
        "the transcripts word by word (ROVER), e.g. [0, 2, 6, 12]. An experiment for replicas "
        "that can run them in parallel (a GPU, or 2 cores a context): on 2 cores they queue "
        "and the final waits for all; as a stream it was within the noise of the surer "
        "decode kept (benchmarks/README.md, 'Combining closing decodes word by word').",
    )
    max_queued: int = Field(
        4, ge=0, description="Requests that may wait for a worker; beyond it RESOURCE_EXHAUSTED."
    )
    preload: bool = Field(True, description="Load the default model before reporting SERVING.")
    warm_up: bool = Field(True, description="Run the preloaded model once before SERVING.")
    idle_unload_s: float = Field(
        0.0,
        ge=0,
        description="Unload a model unused this long (seconds) and return its memory; 0 = never.",
    )
    max_batch_size: int = Field(
        16, ge=1, description="Most windows decoded together (batched path)."
    )
    long_form_min_s: float = Field(
        LONG_FORM_MIN_S,
        gt=0,
        description="Audio at least this long uses the long-form (batched) path.",
    )
    vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="Silero speech probability (long-form path)."
    )
    vad_min_silence_ms: int = Field(
        160, ge=0, description="Pause that ends a speech range (long-form path)."
    )
    vad_speech_pad_ms: int = Field(
        150, ge=0, description="Padding around speech ranges (long-form path)."
    )
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="Longest audio accepted.")
    quiet_gain: bool = Field(
        True,
        description="Bring quiet speech (loud frames under -30 dBFS) up with one static gain "
        "before decoding; see asr_mesh.services.transcription.guards.quiet_gain.",
    )
    max_workers: int = Field(12, ge=1, description="Threads serving RPCs concurrently.")
    max_streams: int = Field(
        2,
        ge=1,
        description="Streaming sessions at once; beyond it RESOURCE_EXHAUSTED with RetryInfo.",
    )
    max_stream_s: float = Field(
        3600.0, gt=0, description="Longest streaming session (audio seconds)."
    )
    stream_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Close a streaming session (DEADLINE_EXCEEDED) after this long without audio.",
    )

    @model_validator(mode="after")
    def _threads_for_streams(self) -> TranscriptionSettings:
        needed = self.num_workers + self.max_queued + self.max_streams + 2
        if self.max_workers < needed:
            raise ValueError(
                f"max_workers ({self.max_workers}) must be at least num_workers + "
                f"max_queued + max_streams + 2 ({needed}): each session holds a thread"
            )
        return self


def load_whisper(spec, device: str, compute_type: str, cpu_threads: int = 0, num_workers: int = 1):
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(spec.path),
        device=device,
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        num_workers=num_workers,
        local_files_only=True,
    )


def _model_gauge(name: str, device: str, compute_type: str, loaded: bool) -> None:
    gauge = metrics.MODEL_LOADED.labels(SERVICE, name, device, compute_type)
    gauge.inc() if loaded else gauge.dec()  # instances: the shared one, streaming's beam one


def stream_beam_workers(settings: TranscriptionSettings) -> int:
    """Workers of the streaming beam instance: every session's decodes at once (a profile may
    run two, `LatencyProfile.second_context_s`). On CPU CTranslate2's workers share the
    weights, so a worker costs no memory."""
    return settings.max_streams * max(
        with_rover(p, settings.stream_rover_contexts).decodes_at_once for p in PROFILES.values()
    )


def build_transcriber(settings: TranscriptionSettings) -> Transcriber:
    device = auto_device(settings.device)
    compute_type = auto_compute_type(settings.compute_type, device)

    def loader(spec, dev, ctype, threads=0):
        if threads:  # a streaming instance (`stream_beam_threads`): workers for every session
            return load_whisper(spec, dev, ctype, threads, stream_beam_workers(settings))
        return load_whisper(spec, dev, ctype, settings.cpu_threads, settings.num_workers)

    registry = ModelRegistry(
        settings.models_dir,
        settings.default_model,
        loader,
        idle_unload_s=settings.idle_unload_s,
        on_change=_model_gauge,
        on_lookup=lambda hit: metrics.record_cache(SERVICE, "model", hit),
    )
    return Transcriber(
        registry,
        device,
        compute_type,
        queue=WorkQueue(
            settings.num_workers,
            settings.max_queued,
            on_change=gauge_reporter(SERVICE),
            name=SERVICE,
        ),
        max_batch_size=settings.max_batch_size,
        long_form_min_s=settings.long_form_min_s,
        vad=VadParams(
            threshold=settings.vad_threshold,
            min_silence_duration_ms=settings.vad_min_silence_ms,
            speech_pad_ms=settings.vad_speech_pad_ms,
        ),
        free_memory=lambda: cuda_free_bytes(device),
        quiet_gain=settings.quiet_gain,
        on_batch=lambda size: metrics.BATCH_SIZE.labels(SERVICE).observe(size),
        on_work=lambda audio_s, processing_s: metrics.record_work(SERVICE, audio_s, processing_s),
    )


def create_server(
    settings: TranscriptionSettings, transcriber: Transcriber | None = None
) -> ServerHandle:
    """Start a transcription server; tests pass port 0 and may inject a transcriber.

    With `preload` the server answers health checks as NOT_SERVING until the default model is
    loaded (and, with `warm_up`, has run once), so no request pays for the first load.
    """
    transcriber = transcriber or build_transcriber(settings)
    servicer = TranscriptionServicer(
        transcriber,
        settings.max_audio_seconds,
        StreamingHandler(
            transcriber,
            max_sessions=settings.max_streams,
            max_session_s=settings.max_stream_s,
            idle_timeout_s=settings.stream_idle_timeout_s,
            beam_threads=settings.stream_beam_threads,
            rover_contexts_s=settings.stream_rover_contexts,
        ),
    )
    metrics.QUEUE_DEPTH.labels(SERVICE).set(0)
    handle = build_server(
        settings,
        register=lambda server: pb_grpc.add_TranscriptionServiceServicer_to_server(
            servicer, server
        ),
        service_names=[pb.DESCRIPTOR.services_by_name["TranscriptionService"].full_name],
        serving=not settings.preload,
    )
    if settings.preload:
        try:
            if settings.warm_up:
                transcriber.warm_up()
            else:
                transcriber.registry.get("", transcriber.device, transcriber.compute_type)
        except BaseException:
            handle.stop(0)  # a server that can never serve must not keep its port and threads
            raise
        handle.set_serving(True)
    transcriber.registry.start_reaper()
    handle.on_stop.append(transcriber.registry.stop_reaper)
    return handle


def main() -> None:
    run_service(SERVICE, TranscriptionSettings, create_server)


if __name__ == "__main__":
    main()
