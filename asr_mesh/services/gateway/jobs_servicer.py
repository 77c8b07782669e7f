"""Thin gRPC layer of the gateway's job API (`asr.gateway.v1.JobService`).

Uploads are received exactly as `Transcribe` receives them (same config message, same size
checks, same refusal of cut-off uploads) but into the job spool; the work itself is done by
`jobs.JobRunner` threads of whichever replica claims the job. Results stream back exactly as
`Transcribe` streams them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

from google.protobuf import timestamp_pb2
from opentelemetry import trace

from asr.gateway.v1 import gateway_service_pb2 as gw_pb
from asr.gateway.v1 import jobs_pb2 as pb
from asr.gateway.v1 import jobs_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.aio import in_executor
from asr_mesh.services.common.domain import ProgressUpdate
from asr_mesh.services.common.errors import (
    DependencyUnavailable,
    FailedPrecondition,
    InvalidInput,
    MeshError,
    NotFound,
)
from asr_mesh.services.common.options import requested
from asr_mesh.services.common.streams import UploadMeter
from asr_mesh.services.gateway.jobs import (
    CANCELLED,
    FAILED,
    FINAL,
    RUNNING,
    STATES,
    SUCCEEDED,
    JobRecord,
    JobStore,
    Spool,
    new_job_id,
    options_to_dict,
    stored_results,
    valid_job_id,
)
from asr_mesh.services.gateway.result_cache import file_sha256
from asr_mesh.services.gateway.servicer import STAGE_ENUMS, GatewayServicer, chain_options

STATE_ENUMS = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
}
STATE_NAMES = {value: name for name, value in STATE_ENUMS.items()}
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
CANCEL_WAIT_S = 5.0
"""How long CancelJob waits for a running chain to stop before answering with the job as it is."""


log = logging.getLogger(__name__)


class _GuardedStore:
    """The store, with its failures (Redis down, a locked SQLite file) as UNAVAILABLE sentences."""

    def __init__(self, store: JobStore):
        self._store = store

    def __getattr__(self, name: str):
        method = getattr(self._store, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except MeshError:
                raise
            except Exception as exc:
                log.warning("job store %s failed: %s: %s", name, type(exc).__name__, exc)
                raise DependencyUnavailable(
                    f"the job store is unavailable ({type(exc).__name__}); try again shortly"
                ) from None

        return call


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_to_proto(record: JobRecord) -> pb.Job:
    job = pb.Job(
        job_id=record.job_id,
        state=STATE_ENUMS[record.state],
        filename=record.filename,
        trace_id=record.trace_id,
        create_time=_timestamp(record.created),
        update_time=_timestamp(record.updated or record.created),
        fraction=record.fraction,
        expire_time=_timestamp(record.expires),
        attempts=record.attempts,
        upload_size_bytes=record.upload_bytes,
    )
    if record.stage in STAGE_ENUMS:
        job.progress.CopyFrom(
            convert.progress_to_proto(
                STAGE_ENUMS[record.stage],
                ProgressUpdate(record.stage_fraction, message=record.message),
            )
        )
    if record.state in (FAILED, CANCELLED) and record.error_code:
        job.error.CopyFrom(
            pb.JobError(
                code=record.error_code, message=record.error_message, reason=record.error_reason
            )
        )
    if record.state == SUCCEEDED and record.summary:
        s = record.summary
        job.result.CopyFrom(
            gw_pb.TranscribeResult(
                trace_id=record.trace_id,
                language_code=s["language_code"],
                audio_duration=convert.duration(s["audio_duration"]),
                speakers=s["speakers"],
                model=s["model"],
                diarization_backend=s["diarization_backend"],
                processing_duration=convert.duration(s["processing_seconds"]),
                segment_count=s["segment_count"],
                document_count=s["document_count"],
                cache_hit=s["cache_hit"],
            )
        )
    return job


class JobServicer(pb_grpc.JobServiceServicer):
    def __init__(
        self,
        gateway: GatewayServicer,
        store: JobStore,
        spool: Spool,
        *,
        retention_s: float,
        poll_s: float,
    ):
        self._gateway = gateway  # receives uploads and renders results the way Transcribe does
        self._store = _GuardedStore(store)
        self._spool = spool
        self._retention_s = retention_s
        self._poll_s = poll_s

    def _job(self, job_id: str) -> JobRecord:
        if not valid_job_id(job_id):
            raise InvalidInput(
                f"{job_id!r} is not a job id (32 hex digits, as SubmitJob returns)", field="job_id"
            )
        record = self._store.get(job_id)
        if record is None:
            raise NotFound(
                f"no job {job_id}: it never existed, was deleted, or its retention time is over"
            )
        return record

    async def _call(self, fn, *args):
        """A blocking store call, off the event loop."""
        return await in_executor(self._gateway._io, fn, *args)

    async def SubmitJob(self, request_iterator, context) -> pb.SubmitJobResponse:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidInput("the first message of the stream must carry config", field="config")
        self._gateway._backends.require_diarization(requested(first.config))
        options = chain_options(first.config)
        meter = UploadMeter(
            first.config.upload_size_bytes,
            threading.Event(),
            what="upload",
            field="config.upload_size_bytes",
        )
        self._gateway._check_upload_size(meter.declared)
        job_id = new_job_id()
        span = trace.get_current_span()
        span.set_attribute("asr.job.id", job_id)
        path = self._spool.create(job_id)
        try:
            size = await self._gateway.receive(request_iterator, path, meter)
            ctx = span.get_span_context()
            record = JobRecord(
                job_id,
                options_to_dict(options),
                filename=options.filename,
                trace_id=format(ctx.trace_id, "032x") if ctx.is_valid else "",
                span_id=format(ctx.span_id, "016x") if ctx.is_valid else "",
                input_path=str(path),
                input_sha256=await self._call(file_sha256, path),
                upload_bytes=size,
                no_cache=first.config.no_cache,
            )
            await self._call(self._store.submit, record)
        except BaseException:
            self._spool.remove(job_id)  # a refused or cut-off upload leaves nothing behind
            raise
        return pb.SubmitJobResponse(job=job_to_proto(record))

    async def GetJob(self, request: pb.GetJobRequest, context) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=job_to_proto(await self._call(self._job, request.job_id)))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        record = await self._call(self._job, request.job_id)
        last = None
        while not context.done():
            seen = (record.state, record.stage, round(record.stage_fraction, 3), record.attempts)
            if seen != last:
                last = seen
                yield pb.WatchJobResponse(job=job_to_proto(record))
            if record.state in FINAL:
                return
            await asyncio.sleep(self._poll_s)
            record = await self._call(self._job, request.job_id)

    async def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        return await self._call(self._list_jobs, request)

    def _list_jobs(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        if request.page_size < 0:
            raise InvalidInput("page_size must not be negative", field="page_size")
        if request.state and request.state not in STATE_NAMES:
            raise InvalidInput(f"unknown job state {request.state}", field="state")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = None
        if request.page_token:
            created, _, job_id = request.page_token.partition(":")
            try:
                before = (float(created), job_id)
            except ValueError:
                raise InvalidInput(
                    "page_token is not one ListJobs returned", field="page_token"
                ) from None
        records = self._store.list(STATE_NAMES.get(request.state), size + 1, before)
        token = ""
        if len(records) > size:
            records = records[:size]
            token = f"{records[-1].created!r}:{records[-1].job_id}"
        return pb.ListJobsResponse(jobs=[job_to_proto(r) for r in records], next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.CancelJobResponse:
        record = await self._call(self._job, request.job_id)
        record = (
            await self._call(self._store.request_cancel, record.job_id, self._retention_s) or record
        )
        if record.state == CANCELLED:
            self._spool.remove(record.job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while record.state == RUNNING and time.monotonic() < deadline and not context.done():
            await asyncio.sleep(min(self._poll_s, 0.1))
            record = await self._call(self._store.get, record.job_id) or record
        return pb.CancelJobResponse(job=job_to_proto(record))

    async def GetJobResults(
        self, request: pb.GetJobResultsRequest, context
    ) -> AsyncIterator[pb.GetJobResultsResponse]:
        for message in await self._call(self._results, request.job_id):
            yield message

    def _results(self, job_id: str) -> list[pb.GetJobResultsResponse]:
        record = self._job(job_id)
        if record.state != SUCCEEDED:
            why = {"failed": f"it failed: {record.error_message}", "cancelled": "it was cancelled"}
            raise FailedPrecondition(
                f"job {record.job_id} has no results: "
                + why.get(
                    record.state, f"it is {record.state}; results are there once it has succeeded"
                )
            )
        result = stored_results(self._store, record.job_id)
        if result is None:
            raise NotFound(f"the results of job {record.job_id} are gone (retention time over)")
        messages = []
        for message in self._gateway._transcript(result):
            kind = message.WhichOneof("payload")
            messages.append(pb.GetJobResultsResponse(**{kind: getattr(message, kind)}))
        summary = self._gateway._result(result, record.trace_id)
        summary.cache_hit = bool(record.summary.get("cache_hit"))
        messages.append(pb.GetJobResultsResponse(result=summary))
        return messages

    async def DeleteJob(self, request: pb.DeleteJobRequest, context) -> pb.DeleteJobResponse:
        await self._call(self._delete, request.job_id)
        return pb.DeleteJobResponse()

    def _delete(self, job_id: str) -> None:
        record = self._job(job_id)
        if record.state not in FINAL:
            self._store.request_cancel(
                record.job_id, self._retention_s
            )  # its runner stops the chain
        self._store.delete(record.job_id)
        self._spool.remove(record.job_id)


assert set(STATE_ENUMS) == set(STATES)
