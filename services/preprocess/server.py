"""Preprocess service: settings, `create_server` factory and `main()`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from asr.preprocess.v1 import preprocess_service_pb2 as pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pb_grpc
from services.common.server import ServerHandle, build_server, configure_logging, serve_forever
from services.common.settings import ServerSettings
from services.common.telemetry import setup_telemetry
from services.preprocess.core import PreprocessLimits, Preprocessor, PreprocessorConfig
from services.preprocess.servicer import PreprocessServicer

SERVICE = "preprocess"
log = logging.getLogger(__name__)


class PreprocessSettings(ServerSettings):
    """Environment: ASR_PREPROCESS_* (plus ASR_STATE_DIR and OTEL_*)."""

    model_config = SettingsConfigDict(env_prefix="ASR_PREPROCESS_", extra="ignore")

    ffmpeg_path: str = Field("ffmpeg", description="ffmpeg binary (name on PATH or a path).")
    ffprobe_path: str = Field("ffprobe", description="ffprobe binary (name on PATH or a path).")
    temp_dir: Path | None = Field(
        None, description="Root for per-request spool directories; system temp dir when unset."
    )
    max_upload_bytes: int = Field(2 << 30, gt=0, description="Largest upload accepted.")
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="Longest audio accepted.")
    max_decoded_bytes: int = Field(1 << 30, gt=0, description="Most PCM one request may produce.")
    max_decode_seconds: float = Field(900.0, gt=0, description="Wall-clock limit of one decode.")
    probe_timeout_seconds: float = Field(30.0, gt=0, description="Wall-clock limit of ffprobe.")
    child_memory_bytes: int = Field(
        1 << 30, ge=64 << 20, description="Address-space limit of each ffmpeg/ffprobe child."
    )
    max_concurrent_jobs: int = Field(4, ge=1, description="Decodes running at once; more → RESOURCE_EXHAUSTED.")
    loudnorm_target_lufs: float = Field(-23.0, le=0, description="Integrated loudness target (EBU R128).")
    silence_threshold_db: float = Field(-50.0, lt=0, description="Level under which trim_silence cuts.")


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
    return Preprocessor(PreprocessorConfig(
        ffmpeg_path=resolve_binary(settings.ffmpeg_path),
        ffprobe_path=resolve_binary(settings.ffprobe_path),
        temp_root=settings.temp_dir,
        limits=limits,
        loudnorm_target_lufs=settings.loudnorm_target_lufs,
        silence_threshold_db=settings.silence_threshold_db,
        max_concurrent_jobs=settings.max_concurrent_jobs,
    ))


def create_server(settings: PreprocessSettings, preprocessor: Preprocessor | None = None) -> ServerHandle:
    """Start a preprocess server; tests pass port 0 and may inject a preprocessor."""
    servicer = PreprocessServicer(preprocessor or build_preprocessor(settings))
    return build_server(
        settings,
        register=lambda server: pb_grpc.add_PreprocessServiceServicer_to_server(servicer, server),
        service_names=[pb.DESCRIPTOR.services_by_name["PreprocessService"].full_name],
    )


def main() -> None:
    settings = PreprocessSettings()
    configure_logging(settings.log_level)
    setup_telemetry(SERVICE, settings.state_dir)
    serve_forever(create_server(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
