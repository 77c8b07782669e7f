"""Diarization server: settings, backend choice, the server factory and `main()`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from asr.diarization.v1 import diarization_service_pb2 as pb
from asr.diarization.v1 import diarization_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import metrics
from asr_mesh.services.common.metrics import gauge_reporter
from asr_mesh.services.common.scheduler import WorkQueue
from asr_mesh.services.common.server import ServerHandle, build_server, run_service
from asr_mesh.services.common.settings import QueuedServerSettings
from asr_mesh.services.diarization.core import Backend, Diarizer
from asr_mesh.services.diarization.servicer import DiarizationServicer

SERVICE = "diarization"
log = logging.getLogger(__name__)


class DiarizationSettings(QueuedServerSettings):
    """Environment: ASR_DIARIZATION_* (plus ASR_STATE_DIR and OTEL_*)."""

    model_config = SettingsConfigDict(env_prefix="ASR_DIARIZATION_", extra="ignore")

    pyannote_dir: Path | None = Field(
        None,
        description="Local pyannote pipeline directory (community-1 layout); when set, "
        "the pyannote backend runs instead of the offline embedding-clustering default.",
    )
    device: str = Field("cpu", description="torch device for the pyannote backend (cpu, cuda).")
    torch_threads: int = Field(
        2, ge=0, description="torch intra-op threads; 0 leaves torch's default."
    )
    max_speakers: int = Field(10, ge=1, description="Largest speaker count a request may ask for.")
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="Longest audio accepted.")
    num_workers: int = Field(1, ge=1, description="Requests diarized at once.")
    max_queued: int = Field(
        4, ge=0, description="Requests that may wait for a worker; beyond it RESOURCE_EXHAUSTED."
    )
    cluster_method: Literal["nme-sc", "threshold"] = Field(
        "nme-sc",
        description="Embedding-clustering speaker count: nme-sc (self-tuning "
        "normalised maximum eigengap spectral clustering) or threshold (the fixed "
        "average-linkage cut at cluster_threshold, the default before).",
    )
    cluster_threshold: float = Field(
        0.30,
        gt=0,
        lt=2,
        description="Embedding-clustering, method threshold: average-linkage "
        "cosine distance above which two groups of windows are different speakers.",
    )
    window_hop_s: float = Field(
        0.4, gt=0, le=1.6, description="Embedding-clustering: seconds between windows."
    )
    turn_extension_s: float = Field(
        0.45,
        ge=0,
        le=2,
        description="Embedding-clustering: how far turn edges grow into "
        "silence. 0.45 matches references that count each utterance's quiet onset and release "
        "(audio made like corpus-dev); 0 suits references marking speech only "
        "(build/corpus-validate).",
    )
    detect_overlaps: bool = Field(
        False,
        description="Embedding-clustering: find overlapped speech with a second pass of "
        "short windows (about 60% more diarization time; turns are the same either way). Off by "
        "default: the overlaps it returns are not read by the gateway or merge yet.",
    )


def build_backend(settings: DiarizationSettings) -> Backend:
    """The pyannote backend when a pipeline directory is configured, else the offline default.

    The backend's model is reported loaded (asr_model_loaded) once it is, and the embedding
    backend's encoder batches feed asr_batch_size.
    """
    if settings.pyannote_dir is not None:
        from asr_mesh.services.diarization.pyannote_backend import PyannoteBackend

        pipeline = PyannoteBackend(
            settings.pyannote_dir, device=settings.device, torch_threads=settings.torch_threads
        )
        _model_gauge(f"pyannote:{pipeline.directory.name}", settings.device)
        return pipeline
    from asr_mesh.services.diarization.clustering import ClusteringOptions
    from asr_mesh.services.diarization.embedding import (
        ENCODER_MODEL,
        EmbeddingBackendOptions,
        EmbeddingClusteringBackend,
    )
    from asr_mesh.services.diarization.overlap import OverlapOptions

    options = EmbeddingBackendOptions(
        hop=settings.window_hop_s,
        turn_extension=settings.turn_extension_s,
        clustering=ClusteringOptions(
            method=settings.cluster_method, threshold=settings.cluster_threshold
        ),
        overlap=OverlapOptions(enabled=settings.detect_overlaps),
    )
    backend = EmbeddingClusteringBackend(
        options=options,
        torch_threads=settings.torch_threads,
        on_batch=lambda size: metrics.BATCH_SIZE.labels(SERVICE).observe(size),
    )
    _model_gauge(ENCODER_MODEL, "cpu")
    return backend


def _model_gauge(model: str, device: str) -> None:
    metrics.MODEL_LOADED.labels(SERVICE, model, device, "float32").set(1)


def build_diarizer(settings: DiarizationSettings, backend: Backend | None = None) -> Diarizer:
    """The service's diarizer, its finished work feeding the real-time-factor metrics; the
    configured backend unless one is given (tests)."""
    return Diarizer(
        backend or build_backend(settings),
        settings.max_speakers,
        on_work=lambda audio_s, processing_s: metrics.record_work(SERVICE, audio_s, processing_s),
    )


def create_server(settings: DiarizationSettings, diarizer: Diarizer | None = None) -> ServerHandle:
    """Start a diarization server; tests pass port 0 and may inject a diarizer.

    The backend is loaded before the server starts, so a bad pyannote directory fails here, at
    startup, with a readable message rather than on the first request.
    """
    diarizer = diarizer or build_diarizer(settings)
    queue = WorkQueue(
        settings.num_workers, settings.max_queued, on_change=gauge_reporter(SERVICE), name=SERVICE
    )
    servicer = DiarizationServicer(diarizer, settings.max_audio_seconds, queue)
    metrics.QUEUE_DEPTH.labels(SERVICE).set(0)
    metrics.BUSY_WORKERS.labels(SERVICE).set(0)
    log.info("diarization backend: %s", diarizer.backend.name)
    return build_server(
        settings,
        register=lambda server: pb_grpc.add_DiarizationServiceServicer_to_server(servicer, server),
        service_names=[pb.DESCRIPTOR.services_by_name["DiarizationService"].full_name],
    )


def main() -> None:
    run_service(SERVICE, DiarizationSettings, create_server)


if __name__ == "__main__":
    main()
