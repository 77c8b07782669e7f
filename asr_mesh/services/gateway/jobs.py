"""Durable jobs: the record a store keeps, the spool of inputs, and the runner that works them.

A job is accepted (its upload spooled to `<spool>/<job id>/input`, its record stored QUEUED)
and answered at once; a `JobRunner` thread of any gateway replica sharing the store claims it,
runs the same chain `Transcribe` runs (`pipeline.run_chain` on the same `Stages`), and writes
the result. While it runs, the runner renews the job's lease every `poll_s`; a runner that dies
(kill -9, a lost node) stops renewing, and once `lease_s` has passed another runner claims the
job and runs it again (at least once; results are written under the job's id, so a second
write is the same write). A cancel request is seen on the next renewal and cancels the chain.
On a graceful stop (SIGTERM, a Kubernetes drain) the runner cancels its chains and hands their
jobs back to the queue instead of losing them.

Pure: no gRPC here. Stores: `jobs_store.SqliteJobStore` (embedded), `jobs_redis.RedisJobStore`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from asr_mesh.services.common.domain import MediaReport, ProgressUpdate
from asr_mesh.services.common.errors import Cancelled, MeshError, status_code
from asr_mesh.services.common.options import to_flat_dict
from asr_mesh.services.gateway.pipeline import ChainOptions, ChainResult, Stages, run_chain
from asr_mesh.services.gateway.result_cache import ResultCache, decode_result, encode_result

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

STAGE_WEIGHTS = {
    "upload": (0.0, 0.0),
    "preprocess": (0.0, 0.15),
    "transcription": (0.15, 0.8),
    "merge": (0.95, 0.05),
}
"""Overall progress = start + weight × the stage's fraction (diarization runs beside
transcription)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def valid_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


@dataclass
class JobRecord:
    """Everything a store keeps about a job except its results."""

    job_id: str
    options: dict
    """`ChainOptions` as a dict (`options_to_dict`, validated at submit)."""
    state: str = QUEUED
    filename: str = ""
    trace_id: str = ""
    span_id: str = ""
    """The SubmitJob request's span: the job's chain runs as its child, in the same trace."""
    input_path: str = ""
    input_sha256: str = ""
    upload_bytes: int = 0
    no_cache: bool = False
    created: float = field(default_factory=time.time)
    updated: float = 0.0
    stage: str = ""
    stage_fraction: float = 0.0
    fraction: float = 0.0
    message: str = ""
    error_code: str = ""
    error_reason: str = ""
    error_message: str = ""
    summary: dict = field(default_factory=dict)
    expires: float = 0.0
    """When a final job and its results are deleted (0 while not final)."""
    attempts: int = 0
    owner: str = ""
    lease_until: float = 0.0
    cancel_requested: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> JobRecord:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def chain_options(self) -> ChainOptions:
        return ChainOptions.of(**self.options)

    def expired(self, now: float | None = None) -> bool:
        return bool(self.expires) and self.expires <= (now if now is not None else time.time())


def options_to_dict(options: ChainOptions) -> dict:
    """What a job record keeps of its options: the file name and the flat form of
    `asr_mesh.services.common.options.to_flat_dict` (records written before the nested options read
    back the same)."""
    return {"filename": options.filename, **to_flat_dict(options.recognition)}


def summary_of(result: ChainResult, cache_hit: bool) -> dict:
    """The result summary a job shows before its results are fetched."""
    return {
        "language_code": result.transcript.language_code,
        "audio_duration": result.audio_duration,
        "speakers": list(result.merged.speakers),
        "model": result.transcript.model,
        "diarization_backend": result.diarization.backend if result.diarization else "",
        "processing_seconds": result.seconds,
        "segment_count": len(result.merged.segments),
        "document_count": len(result.merged.documents),
        "cache_hit": cache_hit,
    }


class JobStore(Protocol):
    """Where jobs live. Every method is safe to call from many threads and processes."""

    def submit(self, record: JobRecord) -> None:
        """Store a new QUEUED job and make it claimable."""

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None when unknown, deleted or past its retention time."""

    def list(
        self, state: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[JobRecord]:
        """Jobs newest first, created before `before` = (created, job_id) when given."""

    def claim(self, worker: str, lease_s: float) -> JobRecord | None:
        """Take the oldest claimable job (queued, or running under a lease not renewed for
        `lease_s`)."""

    def renew(self, job_id: str, worker: str, lease_s: float) -> str:
        """Extend `worker`'s lease: "ok", "cancel" (a caller asked to cancel) or "lost"."""

    def progress(
        self,
        job_id: str,
        worker: str,
        stage: str,
        stage_fraction: float,
        fraction: float,
        message: str,
    ) -> None: ...

    def finish(
        self,
        job_id: str,
        worker: str,
        state: str,
        *,
        retention_s: float,
        summary: dict | None = None,
        results: bytes | None = None,
        error: tuple[str, str, str] | None = None,
    ) -> bool:
        """Make the job final (idempotent: False when it already was)."""

    def release(self, job_id: str, worker: str) -> None:
        """Hand a running job back to the queue (graceful stop)."""

    def request_cancel(self, job_id: str, retention_s: float) -> JobRecord | None:
        """A queued job is cancelled at once; a running one is flagged for its runner."""

    def results(self, job_id: str) -> bytes | None: ...

    def delete(self, job_id: str) -> bool: ...

    def purge_expired(self) -> int: ...

    def close(self) -> None: ...


def open_store(spec: str, state_dir: Path) -> JobStore:
    """`redis://…` → RedisJobStore; "" or `sqlite:///path` → SqliteJobStore (default in the state
    dir)."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from asr_mesh.services.gateway.jobs_redis import RedisJobStore

        return RedisJobStore(spec)
    from asr_mesh.services.gateway.jobs_store import SqliteJobStore

    path = (
        Path(spec.removeprefix("sqlite://")) if spec else Path(state_dir) / "jobs" / "jobs.sqlite"
    )
    return SqliteJobStore(path)


class Spool:
    """Uploaded inputs of jobs: `<root>/<job id>/input`, removed when the job is final.

    With several replicas the root must be a volume they all mount (see the README).
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def directory(self, job_id: str) -> Path:
        return self.root / job_id

    def create(self, job_id: str) -> Path:
        path = self.directory(job_id)
        path.mkdir(parents=True, exist_ok=False)
        return path / "input"

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.directory(job_id), ignore_errors=True)

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []


@dataclass
class _Running:
    job_id: str
    stages: Stages
    verdict: str = ""
    """Why the chain was stopped: "cancel", "lost" or "drain" ("" while it may finish)."""


class JobRunner:
    """Claims jobs from the store and runs them, `workers` at a time."""

    def __init__(
        self,
        store: JobStore,
        spool: Spool,
        stages_factory: Callable[[], Stages],
        *,
        cache: ResultCache | None = None,
        workers: int = 1,
        lease_s: float = 30.0,
        poll_s: float = 0.5,
        retention_s: float = 86400.0,
        max_attempts: int = 3,
    ):
        self.store = store
        self.spool = spool
        self._stages_factory = stages_factory
        self._cache = cache
        self._workers = workers
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.retention_s = retention_s
        self.max_attempts = max_attempts
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def start(self) -> None:
        for n in range(self._workers):
            thread = threading.Thread(
                target=self._loop, args=(f"{self._id}-{n}",), name=f"job-runner-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        housekeeping = threading.Thread(
            target=self._housekeeping, name="job-housekeeping", daemon=True
        )
        housekeeping.start()
        self._threads.append(housekeeping)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming; cancel running chains and hand their jobs back to the queue."""
        self._stopping.set()
        with self._lock:
            for running in self._running.values():
                running.verdict = running.verdict or "drain"
                running.stages.cancel()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.1))

    def _loop(self, worker: str) -> None:
        while not self._stopping.is_set():
            try:
                record = self.store.claim(worker, self.lease_s)
            except Exception as exc:  # the store is down for a moment: keep trying
                log.warning("job store: claim failed (%s: %s)", type(exc).__name__, exc)
                record = None
            if record is None:
                self._stopping.wait(self.poll_s)
                continue
            try:
                self._run(record, worker)
            except Exception:
                log.exception("job %s: runner failed", record.job_id)

    def _housekeeping(self) -> None:
        interval = max(min(self.retention_s / 4, 60.0), self.poll_s)
        while not self._stopping.wait(interval):
            try:
                self.store.purge_expired()
            except Exception as exc:
                log.warning("job store: purge failed (%s)", exc)

    def _run(self, record: JobRecord, worker: str) -> None:
        job_id = record.job_id
        if record.attempts > self.max_attempts:
            self._finish(
                record,
                worker,
                FAILED,
                error=(
                    "INTERNAL",
                    "RUNNER_LOST",
                    f"gave up after {record.attempts - 1} attempts: the runner stopped each time",
                ),
            )
            return
        if record.cancel_requested:  # cancelled while its previous runner was dying
            self._finish(
                record, worker, CANCELLED, error=("CANCELLED", "CANCELLED", "cancelled by a caller")
            )
            return
        if not Path(record.input_path).is_file():
            self._finish(
                record,
                worker,
                FAILED,
                error=(
                    "INTERNAL",
                    "INPUT_MISSING",
                    f"the job's input is missing from the spool ({record.input_path}); "
                    "is the spool directory shared by every replica?",
                ),
            )
            return
        parent = _parent_context(record)
        with _tracer.start_as_current_span(
            "job.run",
            context=parent,
            attributes={"asr.job.id": job_id, "asr.job.attempt": record.attempts},
        ) as span:
            options = record.chain_options()
            key = self._cache.key(record.input_sha256, options) if self._cache else None
            hit = self._cache.lookup(key, bypass=record.no_cache) if self._cache else None
            span.set_attribute("asr.cache.hit", hit is not None)
            if hit is not None:
                self._finish(
                    record,
                    worker,
                    SUCCEEDED,
                    summary=summary_of(hit, True),
                    results=encode_result(hit),
                )
                return
            running = _Running(job_id, self._stages_factory())
            with self._lock:
                self._running[job_id] = running
            if self._stopping.is_set():
                running.verdict = "drain"
            renewer = threading.Thread(target=self._renew, args=(running, worker), daemon=True)
            renewer.start()
            try:
                result = run_chain(
                    Path(record.input_path),
                    options,
                    running.stages,
                    self._progress_sink(job_id, worker),
                    record.trace_id,
                )
            except BaseException as exc:
                self._stopped(record, worker, running, exc)
            else:
                if running.verdict:  # finished just as it was cancelled or lost
                    self._stopped(record, worker, running, Cancelled("stopped"))
                else:
                    self._finish(
                        record,
                        worker,
                        SUCCEEDED,
                        summary=summary_of(result, False),
                        results=encode_result(result),
                    )
                    if self._cache:
                        self._cache.store(key, result)
            finally:
                with self._lock:
                    self._running.pop(job_id, None)
                running.verdict = running.verdict or "done"
                renewer.join()

    def _stopped(
        self, record: JobRecord, worker: str, running: _Running, exc: BaseException
    ) -> None:
        verdict = running.verdict
        if verdict == "cancel":
            self._finish(
                record, worker, CANCELLED, error=("CANCELLED", "CANCELLED", "cancelled by a caller")
            )
        elif verdict == "drain":
            log.info("job %s: handed back to the queue (this runner is stopping)", record.job_id)
            self.store.release(record.job_id, worker)
        elif verdict == "lost":
            log.warning(
                "job %s: lease lost to another runner; leaving it to that one", record.job_id
            )
        elif isinstance(exc, MeshError):
            self._finish(
                record, worker, FAILED, error=(status_code(exc).name, exc.reason, exc.message)
            )
        else:
            log.error("job %s failed", record.job_id, exc_info=exc)
            self._finish(
                record,
                worker,
                FAILED,
                error=("INTERNAL", "INTERNAL", f"internal error (trace id {record.trace_id})"),
            )

    def _finish(self, record: JobRecord, worker: str, state: str, **kw) -> None:
        self.store.finish(record.job_id, worker, state, retention_s=self.retention_s, **kw)
        self.spool.remove(record.job_id)
        log.info("job %s: %s", record.job_id, state)

    def _renew(self, running: _Running, worker: str) -> None:
        """Keep the lease while the chain runs; stop the chain on a cancel request or a lost
        lease."""
        while not running.verdict:
            try:
                answer = self.store.renew(running.job_id, worker, self.lease_s)
            except Exception as exc:  # a store hiccup: the lease is long enough to try again
                log.warning("job %s: lease renewal failed (%s)", running.job_id, exc)
                answer = "ok"
            if answer != "ok" and not running.verdict:
                running.verdict = answer
                running.stages.cancel()
                return
            deadline = time.monotonic() + min(self.poll_s, self.lease_s / 3)
            while not running.verdict and time.monotonic() < deadline:
                time.sleep(0.05)

    def _progress_sink(
        self, job_id: str, worker: str
    ) -> Callable[[str, ProgressUpdate | MediaReport], None]:
        last_at, last_stage = 0.0, ""

        def emit(stage: str, event: ProgressUpdate | MediaReport) -> None:
            nonlocal last_at, last_stage
            if not isinstance(event, ProgressUpdate) or stage == "diarization":
                return
            start, weight = STAGE_WEIGHTS.get(stage, (0.0, 0.0))
            now = time.monotonic()
            if stage == last_stage and now - last_at < self.poll_s and event.fraction < 1.0:
                return  # at most one write per poll interval per stage
            last_at, last_stage = now, stage
            try:
                self.store.progress(
                    job_id,
                    worker,
                    stage,
                    event.fraction,
                    start + weight * event.fraction,
                    event.message,
                )
            except Exception as exc:
                log.warning("job %s: progress not stored (%s)", job_id, exc)

        return emit


def _parent_context(record: JobRecord):
    """The SubmitJob request's span as the parent, so the job's work lands in its trace."""
    try:
        ctx = SpanContext(
            trace_id=int(record.trace_id, 16),
            span_id=int(record.span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except (TypeError, ValueError):
        return None
    return trace.set_span_in_context(NonRecordingSpan(ctx)) if ctx.is_valid else None


def stored_results(store: JobStore, job_id: str) -> ChainResult | None:
    blob = store.results(job_id)
    return None if blob is None else decode_result(blob)
