"""Transcription service: settings, `create_server` factory and `main()`."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from services.common.server import ServerHandle, build_server, configure_logging, serve_forever
from services.common.settings import ServerSettings
from services.common.telemetry import setup_telemetry
from services.transcription.core import Transcriber, auto_compute_type, auto_device
from services.transcription.models import ModelRegistry
from services.transcription.servicer import TranscriptionServicer

SERVICE = "transcription"
log = logging.getLogger(__name__)

REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


class TranscriptionSettings(ServerSettings):
    """Environment: ASR_TRANSCRIPTION_* (plus ASR_STATE_DIR and OTEL_*)."""

    model_config = SettingsConfigDict(env_prefix="ASR_TRANSCRIPTION_", extra="ignore")

    models_dir: Path = Field(REPO_MODELS_DIR, description="Directory of local model directories.")
    default_model: str = Field("base", description="Model used when a request names none.")
    device: str = Field("auto", description="cpu, cuda or auto.")
    compute_type: str = Field("auto", description="CTranslate2 compute type, or auto.")
    cpu_threads: int = Field(0, ge=0, description="Threads per model on CPU; 0 = all cores.")
    num_workers: int = Field(1, ge=1, description="CTranslate2 workers (concurrent decodes).")
    preload: bool = Field(True, description="Load the default model before reporting SERVING.")
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="Longest audio accepted.")


def load_whisper(spec, device: str, compute_type: str, cpu_threads: int = 0, num_workers: int = 1):
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(spec.path), device=device, compute_type=compute_type,
        cpu_threads=cpu_threads, num_workers=num_workers, local_files_only=True,
    )


def build_transcriber(settings: TranscriptionSettings) -> Transcriber:
    device = auto_device(settings.device)
    compute_type = auto_compute_type(settings.compute_type, device)

    def loader(spec, dev, ctype):
        return load_whisper(spec, dev, ctype, settings.cpu_threads, settings.num_workers)

    registry = ModelRegistry(settings.models_dir, settings.default_model, loader)
    return Transcriber(registry, device, compute_type)


def create_server(settings: TranscriptionSettings, transcriber: Transcriber | None = None) -> ServerHandle:
    """Start a transcription server; tests pass port 0 and may inject a transcriber."""
    transcriber = transcriber or build_transcriber(settings)
    servicer = TranscriptionServicer(transcriber, settings.max_audio_seconds)
    handle = build_server(
        settings,
        register=lambda server: pb_grpc.add_TranscriptionServiceServicer_to_server(servicer, server),
        service_names=[pb.DESCRIPTOR.services_by_name["TranscriptionService"].full_name],
        serving=not settings.preload,
    )
    if settings.preload:
        transcriber.registry.get("", transcriber.device, transcriber.compute_type)
        handle.set_serving(True)
    return handle


def main() -> None:
    settings = TranscriptionSettings()
    configure_logging(settings.log_level)
    setup_telemetry(SERVICE, settings.state_dir)
    serve_forever(create_server(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
