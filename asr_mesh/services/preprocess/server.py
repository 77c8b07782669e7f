"""Preprocess service: settings, `create_server` factory and `main()`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from asr.preprocess.v1 import preprocess_service_pb2 as pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.metrics import gauge_reporter
from asr_mesh.services.common.server import ServerHandle, build_server, run_service
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.preprocess.core import PreprocessLimits, Preprocessor, PreprocessorConfig
from asr_mesh.services.preprocess.servicer import PreprocessServicer

SERVICE = "preprocess"
log = logging.getLogger(__name__)

ESTIMATE_RTF_DEFAULT = 0.10
"""Whole-mesh seconds per audio second with the default model (whisper base, int8, CPU, 2 cores,
no diarization): plain faster-whisper's real-time factor times the mesh's measured overhead over
it, plus loudness normalisation's decode time (figures and commands: docs/benchmarks.md).
A static, per-deployment figure rather than the gateway's observed history: it is right from the
first request, the same on every replica, and does not mix requests with and without
diarization (which adds to it). Deployments on other hardware set ASR_PREPROCESS_ESTIMATE_RTF from
their own run of those benchmarks (the GPU overlay is an order of magnitude faster)."""


class PreprocessSettings(ServerSettings):
    """Environment: ASR_PREPROCESS_* (plus ASR_STATE_DIR and OTEL_*).

    Loudness normalisation and silence trimming are per-request options (PreprocessConfig); the
    mesh's defaults are the gateway's (asr_mesh/services/common/options.py DEFAULT_*), where the
    measurements behind them are cited.
    """

    model_config = SettingsConfigDict(env_prefix="ASR_PREPROCESS_", extra="ignore")

    ffmpeg_path: str = Field("ffmpeg", description="ffmpeg binary (name on PATH or a path).")
    ffprobe_path: str = Field("ffprobe", description="ffprobe binary (name on PATH or a path).")
    temp_dir: Path | None = Field(
        None,
        description="Root for per-request spool directories; system temp dir when unset. "
        "When set it must belong to this one process: stale asr-preprocess-* spools found there "
        "at start (left by a killed predecessor) are removed.",
    )
    max_upload_bytes: int = Field(2 << 30, gt=0, description="Largest upload accepted.")
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="Longest audio accepted.")
    max_decoded_bytes: int = Field(1 << 30, gt=0, description="Most PCM one request may produce.")
    max_decode_seconds: float = Field(900.0, gt=0, description="Wall-clock limit of one decode.")
    probe_timeout_seconds: float = Field(30.0, gt=0, description="Wall-clock limit of ffprobe.")
    child_memory_bytes: int = Field(
        1 << 30, ge=64 << 20, description="Address-space limit of each ffmpeg/ffprobe child."
    )
    max_concurrent_jobs: int = Field(
        4, ge=1, description="Decodes running at once; more wait in a queue."
    )
    max_queued: int = Field(
        2,
        ge=0,
        description="Requests that may wait for a decode slot (each holds a server thread); "
        "beyond it RESOURCE_EXHAUSTED with a retry hint.",
    )

    @model_validator(mode="after")
    def _threads_outnumber_admitted_work(self) -> PreprocessSettings:
        needed = self.max_concurrent_jobs + self.max_queued + 2
        if self.max_workers < needed:
            raise ValueError(
                f"max_workers ({self.max_workers}) must be at least max_concurrent_jobs + "
                f"max_queued + 2 ({needed}): each admitted request holds a server thread, and "
                "refusals and health checks need free ones"
            )
        return self

    loudnorm_target_lufs: float = Field(
        -23.0, le=0, description="Integrated loudness target (EBU R128) of loudness_normalization."
    )
    silence_threshold_db: float = Field(
        -50.0, lt=0, description="Level under which trim_silence cuts (applied after loudnorm)."
    )
    estimate_rtf: float = Field(
        ESTIMATE_RTF_DEFAULT,
        ge=0,
        description="Processing seconds per audio second of the deployment's configured model, "
        "for the estimate returned in MediaInfo.estimated_processing (0 = no estimate).",
    )


def resolve_binary(name: str) -> str:
    """Absolute path of a tool: children get a fixed environment without PATH."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; install ffmpeg (apt-get install -y ffmpeg)")
    return found


def build_preprocessor(settings: PreprocessSettings) -> Preprocessor:
    """The core configured from settings (binaries resolved to absolute paths)."""
    limits = PreprocessLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_audio_seconds=settings.max_audio_seconds,
        max_decoded_bytes=settings.max_decoded_bytes,
        max_decode_seconds=settings.max_decode_seconds,
        probe_timeout_seconds=settings.probe_timeout_seconds,
        child_memory_bytes=settings.child_memory_bytes,
    )
    return Preprocessor(
        PreprocessorConfig(
            ffmpeg_path=resolve_binary(settings.ffmpeg_path),
            ffprobe_path=resolve_binary(settings.ffprobe_path),
            temp_root=settings.temp_dir,
            limits=limits,
            loudnorm_target_lufs=settings.loudnorm_target_lufs,
            silence_threshold_db=settings.silence_threshold_db,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            max_queued=settings.max_queued,
            estimate_rtf=settings.estimate_rtf,
        ),
        on_queue=gauge_reporter(SERVICE),
    )


def create_server(
    settings: PreprocessSettings, preprocessor: Preprocessor | None = None
) -> ServerHandle:
    """Start a preprocess server; tests pass port 0 and may inject a preprocessor."""
    preprocessor = preprocessor or build_preprocessor(settings)
    servicer = PreprocessServicer(preprocessor)
    handle = build_server(
        settings,
        register=lambda server: pb_grpc.add_PreprocessServiceServicer_to_server(servicer, server),
        service_names=[pb.DESCRIPTOR.services_by_name["PreprocessService"].full_name],
    )
    # After the drain: whatever still runs is cancelled and its spool removed before exit.
    handle.on_stop.append(preprocessor.shutdown)
    return handle


def main() -> None:
    run_service(SERVICE, PreprocessSettings, create_server)


if __name__ == "__main__":
    main()
