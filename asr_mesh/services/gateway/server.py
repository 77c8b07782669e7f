"""Gateway service: settings, `create_server` factory and `main()`."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import grpc.aio
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.gateway.v1 import jobs_pb2 as jobs_pb
from asr.gateway.v1 import jobs_pb2_grpc as jobs_grpc
from asr_mesh.services.common import metrics
from asr_mesh.services.common.aio import AioServerHandle, run_on_loop
from asr_mesh.services.common.metrics import gauge_reporter
from asr_mesh.services.common.scheduler import FairQueue, context_caller
from asr_mesh.services.common.security import downstream_credentials
from asr_mesh.services.common.server import build_aio_server, run_service
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.gateway.availability import Backends
from asr_mesh.services.gateway.downstream import Deadlines, Downstream, GrpcStages
from asr_mesh.services.gateway.fanout import (
    FANOUT_CHUNK_SPEECH_S_DEFAULT,
    FANOUT_MIN_S_DEFAULT,
    FanoutPolicy,
)
from asr_mesh.services.gateway.jobs import JobRunner, Spool, open_store
from asr_mesh.services.gateway.jobs_servicer import JobServicer
from asr_mesh.services.gateway.model_identity import TranscriptionModelIdentity
from asr_mesh.services.gateway.pipeline import Stages
from asr_mesh.services.gateway.quota import SpoolQuota
from asr_mesh.services.gateway.replicas import round_robin_target
from asr_mesh.services.gateway.result_cache import (
    PIPELINE_VERSION,
    DiskCache,
    ModelIdentity,
    RedisCache,
    ResultCache,
)
from asr_mesh.services.gateway.servicer import GatewayServicer
from asr_mesh.services.gateway.streaming import StreamBridge

SERVICE = "gateway"
log = logging.getLogger(__name__)


class GatewaySettings(ServerSettings):
    """Environment: ASR_GATEWAY_* (plus ASR_STATE_DIR and OTEL_*)."""

    model_config = SettingsConfigDict(env_prefix="ASR_GATEWAY_", extra="ignore")

    preprocess_address: str = Field(
        default="127.0.0.1:50051", description="host:port or dns:///name:port"
    )
    transcription_address: str = Field(
        default="127.0.0.1:50052",
        description="host:port, a comma-separated list of replicas (the local mesh), "
        "or dns:///name:port of a headless Service whose DNS answer lists every replica.",
    )
    fanout_min_s: float = Field(
        default=FANOUT_MIN_S_DEFAULT,
        ge=0,
        description="Audio at least this long is cut at pauses into chunks "
        "decoded by every transcription replica at once (asr_mesh/services/gateway/fanout.py); 0 = "
        "never.",
    )
    fanout_chunk_speech_s: float = Field(
        default=FANOUT_CHUNK_SPEECH_S_DEFAULT,
        gt=0,
        description="Seconds of speech per fan-out chunk.",
    )
    fanout_windows_per_replica: int = Field(
        default=1,
        ge=1,
        description="Fan-out chunks one request keeps in flight per replica (a replica's "
        "ASR_TRANSCRIPTION_NUM_WORKERS).",
    )
    fanout_attempts: int = Field(
        default=3, ge=1, description="Tries per fan-out chunk, each on another replica."
    )
    diarization_address: str = Field(
        default="127.0.0.1:50053", description="Empty: no diarization; speaker options are refused."
    )
    merge_address: str = Field(default="127.0.0.1:50054")
    max_upload_bytes: int = Field(default=2 << 30, gt=0, description="Largest upload accepted.")
    spool_dir: Path | None = Field(
        default=None, description="Where uploads are spooled; system temp if unset."
    )
    preprocess_deadline_s: float = Field(
        default=1800.0,
        gt=0,
        description="Decoding a 4-hour file with loudnorm takes ~190 s on 2 cores.",
    )
    deadline_base_s: float = Field(
        default=60.0, gt=0, description="Fixed part of the per-hop deadlines."
    )
    transcription_deadline_per_audio_s: float = Field(
        default=2.0, gt=0, description="Seconds per audio second."
    )
    diarization_deadline_per_audio_s: float = Field(
        default=1.0, gt=0, description="Seconds per audio second."
    )
    merge_deadline_s: float = Field(default=60.0, gt=0)
    stream_deadline_s: float = Field(
        default=3660.0,
        gt=0,
        description="Longest streaming session the gateway relays (wall time; the "
        "transcription service's ASR_TRANSCRIPTION_MAX_STREAM_S plus a margin).",
    )
    spool_quota_bytes: int = Field(
        default=6 << 30,
        gt=0,
        description="Disk all spools may hold together: uploads in flight, their "
        "decoded PCM and the job spool. Beyond it uploads are refused (RESOURCE_EXHAUSTED, "
        "retry later).",
    )
    # Jobs (asr.gateway.v1.JobService) and the result cache: see README "Jobs and the result cache".
    job_store: str = Field(
        default="",
        description='"" = SQLite in <state dir>/jobs; sqlite:///PATH; redis://HOST:PORT/DB '
        "shared by replicas.",
    )
    job_spool_dir: Path | None = Field(
        default=None,
        description="Uploaded inputs of jobs; <state dir>/jobs/spool if unset. Replicas must "
        "share it.",
    )
    job_workers: int = Field(
        default=1, ge=0, description="Jobs this replica runs at once (0 = accept jobs, run none)."
    )
    job_lease_s: float = Field(
        default=30.0, gt=0, description="A job whose runner stops renewing for this long is rerun."
    )
    job_poll_s: float = Field(
        default=0.5, gt=0, description="Claim, renewal, progress and WatchJob interval."
    )
    job_retention_s: float = Field(
        default=7 * 86400.0, gt=0, description="Finished jobs and results kept this long."
    )
    job_max_attempts: int = Field(
        default=3, ge=1, description="Runs of one job before it is failed (poison inputs)."
    )
    cache_enabled: bool = Field(
        default=True, description="Answer repeated work from the result cache."
    )
    cache_store: str = Field(
        default="",
        description='"" = like job_store (disk in <state dir>/cache, or the same Redis); a path '
        "or redis://.",
    )
    cache_max_bytes: int = Field(
        default=2 << 30, gt=0, description="Result cache size cap (LRU beyond it)."
    )
    cache_ttl_s: float = Field(
        default=30 * 86400.0, gt=0, description="Result cache entries older than this miss."
    )
    max_chains: int = Field(
        default=4,
        ge=1,
        description="Chains (preprocess→transcription‖diarization→merge) run at once; "
        "more wait in the admission queue.",
    )
    max_queued: int = Field(
        default=256,
        ge=0,
        description="Requests that may wait for a chain (fair per caller); beyond it "
        "RESOURCE_EXHAUSTED with a retry hint. Waiting costs a coroutine, not a thread.",
    )
    mesh_file: Path | None = Field(
        default=None,
        description="The local supervisor's mesh.json: a backend it does not list is absent.",
    )

    def output_variant(self) -> str:
        """Settings of this gateway that change a transcript for the same request (the result
        cache keys on them): fan-out decodes long files in chunks."""
        policy = self.fanout()
        return f"+fanout({policy.min_audio_s:g},{policy.chunk_speech_s:g})" if policy else ""

    def fanout(self) -> FanoutPolicy | None:
        if self.fanout_min_s <= 0:
            return None
        return FanoutPolicy(
            min_audio_s=self.fanout_min_s,
            chunk_speech_s=self.fanout_chunk_speech_s,
            windows_per_replica=self.fanout_windows_per_replica,
            attempts=self.fanout_attempts,
        )

    def deadlines(self) -> Deadlines:
        return Deadlines(
            preprocess_s=self.preprocess_deadline_s,
            base_s=self.deadline_base_s,
            transcription_per_audio_s=self.transcription_deadline_per_audio_s,
            diarization_per_audio_s=self.diarization_deadline_per_audio_s,
            merge_s=self.merge_deadline_s,
        )


def open_cache(settings: GatewaySettings, model_identity: ModelIdentity) -> ResultCache | None:
    if not settings.cache_enabled:
        return None
    spec = settings.cache_store or (
        settings.job_store if settings.job_store.startswith("redis") else ""
    )
    backend: DiskCache | RedisCache
    if spec.startswith(("redis://", "rediss://", "unix://")):
        backend = RedisCache(spec, settings.cache_max_bytes, settings.cache_ttl_s)
    else:
        path = Path(spec) if spec else settings.state_dir / "cache" / "results.sqlite"
        backend = DiskCache(path, settings.cache_max_bytes, settings.cache_ttl_s)
    return ResultCache(backend, model_identity, PIPELINE_VERSION + settings.output_variant())


def create_server(
    settings: GatewaySettings,
    stages_factory: Callable[[], Stages] | None = None,
    model_identity: ModelIdentity | None = None,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    caller_key: Callable[[object], str] = context_caller,
) -> AioServerHandle:
    """Start a gateway on the process's event loop (grpc.aio); tests may inject `stages_factory`
    to replace the downstream services (and `model_identity`, the model a request runs on as the
    result cache keys it). `interceptors` (an auth check, say) run inside the trace span;
    `credentials` None serves plaintext; `caller_key` maps a call's context to the caller the
    admission queue is fair between."""
    if stages_factory is None:
        downstream = Downstream(
            settings.preprocess_address,
            settings.transcription_address,
            settings.diarization_address,
            settings.merge_address,
            settings.max_message_bytes,
            credentials=downstream_credentials(settings),
            fanout=settings.fanout(),
        )
        deadlines = settings.deadlines()

        def stages_factory() -> Stages:
            return GrpcStages(downstream, deadlines)

        model_identity = model_identity or TranscriptionModelIdentity(downstream.transcription)
    # Injected stages without an identity: the model is unknown, so nothing is cached.
    cache = open_cache(settings, model_identity or (lambda name: None))
    bridge = StreamBridge(
        round_robin_target(settings.transcription_address),
        settings.max_message_bytes,
        credentials=downstream_credentials(settings),
        deadline_s=settings.stream_deadline_s,
    )
    backends = Backends({"diarization": settings.diarization_address}, settings.mesh_file)
    admission = FairQueue(
        settings.max_chains,
        settings.max_queued,
        name="the gateway",
        on_change=gauge_reporter(SERVICE),
        on_wait=metrics.QUEUE_WAIT.labels(SERVICE).observe,
        on_reject=lambda reason: metrics.QUEUE_REJECTED.labels(SERVICE, reason).inc(),
    )
    spool = Spool(settings.job_spool_dir or settings.state_dir / "jobs" / "spool")
    quota = SpoolQuota(
        settings.spool_quota_bytes,
        [(settings.spool_dir or Path(tempfile.gettempdir()), "asr-gateway-*"), (spool.root, "*")],
    )
    servicer = GatewayServicer(
        stages_factory,
        settings.max_upload_bytes,
        settings.spool_dir,
        cache,
        backends=backends,
        streaming=bridge,
        admission=admission,
        caller_key=caller_key,
        quota=quota,
    )
    store = open_store(settings.job_store, settings.state_dir)
    jobs = JobServicer(
        servicer, store, spool, retention_s=settings.job_retention_s, poll_s=settings.job_poll_s
    )
    runner = JobRunner(
        store,
        spool,
        stages_factory,
        cache=cache,
        workers=settings.job_workers,
        lease_s=settings.job_lease_s,
        poll_s=settings.job_poll_s,
        retention_s=settings.job_retention_s,
        max_attempts=settings.job_max_attempts,
    )

    def register(server) -> None:
        pb_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        jobs_grpc.add_JobServiceServicer_to_server(jobs, server)

    handle = build_aio_server(
        settings,
        register=register,
        service_names=[
            pb.DESCRIPTOR.services_by_name["GatewayService"].full_name,
            jobs_pb.DESCRIPTOR.services_by_name["JobService"].full_name,
        ],
        interceptors=interceptors,
        credentials=credentials,
    )
    runner.start()

    def hand_back_queued() -> None:
        async def close() -> None:
            handed = admission.close("the gateway is shutting down")
            if handed:
                metrics.QUEUE_REJECTED.labels(SERVICE, "draining").inc(handed)
                log.info("drain: handed %d queued requests back (UNAVAILABLE, retry)", handed)

        run_on_loop(close(), timeout=10)

    # Drain: queued requests go back to their callers at once (UNAVAILABLE + RetryInfo: another
    # replica, or this one restarted, takes them); the runner stops claiming and hands running
    # jobs back to the store, rather than run them out the grace period meant for calls in flight.
    handle.on_drain.append(hand_back_queued)
    handle.on_drain.append(runner.stop)
    handle.on_stop.append(servicer.close)
    handle.on_stop.append(store.close)
    if cache is not None:
        handle.on_stop.append(cache.close)
    handle.jobs = runner
    handle.admission = admission
    handle.on_stop.append(bridge.close)
    return handle


def main() -> None:
    run_service(SERVICE, GatewaySettings, create_server)


if __name__ == "__main__":
    main()
