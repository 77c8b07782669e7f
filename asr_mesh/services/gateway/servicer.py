"""Thin gRPC layer of the gateway: spool the upload, run the chain, stream events back."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opentelemetry import trace

from asr.common.v1 import progress_pb2
from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.aio import in_executor
from asr_mesh.services.common.domain import MediaReport, ProgressUpdate
from asr_mesh.services.common.errors import InternalError, InvalidInput, LimitExceeded
from asr_mesh.services.common.options import FORMAT_ENUMS, from_config
from asr_mesh.services.common.scheduler import _NO_DEADLINE_S, FairQueue, context_caller
from asr_mesh.services.common.streams import CANCEL_NOTICE_GRACE_S, UploadMeter
from asr_mesh.services.common.telemetry import current_trace_id
from asr_mesh.services.gateway.availability import Backends
from asr_mesh.services.gateway.pipeline import ChainOptions, ChainResult, Stages, run_chain
from asr_mesh.services.gateway.quota import SpoolQuota, unlimited
from asr_mesh.services.gateway.result_cache import ResultCache, file_sha256

STAGE_ENUMS = {
    "upload": progress_pb2.STAGE_UPLOAD,
    "preprocess": progress_pb2.STAGE_PREPROCESS,
    "transcription": progress_pb2.STAGE_TRANSCRIPTION,
    "diarization": progress_pb2.STAGE_DIARIZATION,
    "merge": progress_pb2.STAGE_MERGE,
}
DOCUMENT_CHUNK_CHARS = 256 * 1024
"""Characters per DocumentChunk: at most 1 MiB of UTF-8 whatever the text."""
_tracer = trace.get_tracer(__name__)
log = logging.getLogger(__name__)


def _swallow(future: asyncio.Future) -> None:
    """Retrieve a chain's outcome nobody waits for any more (no 'never retrieved' warnings)."""
    if not future.cancelled():
        future.exception()


def chain_options(config: pb.TranscribeConfig) -> ChainOptions:
    """Validate the caller's config and turn it into chain options: `config.options`, or the
    deprecated flat fields when it is not set (see `asr_mesh.services.common.options`)."""
    return ChainOptions(config.filename, from_config(config))


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    """Async (grpc.aio) servicer: uploads, queueing and idle streams cost a coroutine each.

    A spooled upload enters `admission` (a per-caller fair queue); once admitted, the sync
    chain runs on `chain_executor` (as many threads as the queue admits) and its progress comes
    back to this coroutine through an asyncio queue. Blocking helpers (hashing, the result
    cache) run on `io_executor`.
    """

    def __init__(
        self,
        stages_factory: Callable[[], Stages],
        max_upload_bytes: int,
        spool_dir: Path | None,
        cache: ResultCache | None = None,
        *,
        backends: Backends | None = None,
        streaming=None,
        admission: FairQueue | None = None,
        chain_executor: ThreadPoolExecutor | None = None,
        io_executor: ThreadPoolExecutor | None = None,
        caller_key: Callable[[object], str] = context_caller,
        quota: SpoolQuota | None = None,
    ):
        self._stages_factory = stages_factory
        self._backends = backends or Backends({"diarization": "configured"})
        self._max_upload_bytes = max_upload_bytes
        self._spool_dir = spool_dir
        self._cache = cache
        self._streaming = streaming  # an asr_mesh.services.gateway.streaming.StreamBridge
        self._quota = (
            quota or unlimited()
        )  # disk of all spools together (asr_mesh/services/gateway/quota.py)
        self.admission = admission or FairQueue(4, 256, name="the gateway")
        self._chains = chain_executor or ThreadPoolExecutor(self.admission.capacity, "chain-run")
        self._io = io_executor or ThreadPoolExecutor(4, "gateway-io")
        self._caller_key = caller_key

    def close(self) -> None:
        self._chains.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)

    async def StreamingTranscribe(self, request_iterator, context):
        if self._streaming is None:
            raise InternalError("this gateway has no transcription service for streaming")
        async for response in self._streaming(request_iterator, context):
            yield response

    async def Transcribe(self, request_iterator, context) -> AsyncIterator[pb.TranscribeResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidInput("the first message of the stream must carry config", field="config")
        options = chain_options(first.config)
        self._backends.require_diarization(options.recognition)
        span = trace.get_current_span()
        span.set_attributes(
            {"asr.diarize": options.diarize, "asr.formats": ",".join(options.formats)}
        )
        meter = UploadMeter(
            first.config.upload_size_bytes,
            threading.Event(),
            what="upload",
            field="config.upload_size_bytes",
        )
        self._check_upload_size(meter.declared)  # refused before a byte of it is sent
        spool = Path(tempfile.mkdtemp(prefix="asr-gateway-", dir=self._spool_dir))
        try:
            upload = spool / "upload"
            with _tracer.start_as_current_span("gateway.upload") as upload_span:
                size = await self.receive(request_iterator, upload, meter)
                upload_span.set_attribute("asr.upload.bytes", size)
            span.set_attribute("asr.upload.bytes", size)
            yield self._progress("upload", ProgressUpdate(1.0, message=f"received {size} bytes"))
            async for message in self._cached_run(upload, options, first.config.no_cache, context):
                yield message
        finally:
            shutil.rmtree(spool, ignore_errors=True)

    async def _cached_run(
        self, upload: Path, options: ChainOptions, no_cache: bool, context
    ) -> AsyncIterator[pb.TranscribeResponse]:
        """Answer from the result cache when it holds this work, else run the chain (and keep
        it)."""
        cache = self._cache
        if cache is None:
            async for message in self._run(upload, options, context):
                yield message
            return
        started = time.perf_counter()
        digest = await in_executor(self._io, file_sha256, upload)
        key = cache.key(digest, options)
        hit = await in_executor(self._io, lambda: cache.lookup(key, bypass=no_cache))
        trace.get_current_span().set_attribute("asr.cache.hit", hit is not None)
        if hit is None:
            async for message in self._run(upload, options, context, cache_key=key):
                yield message
            return
        hit = dataclasses.replace(hit, seconds=time.perf_counter() - started)
        log.info("transcribed %r from the result cache", options.filename)
        for message in self._transcript(hit):
            yield message
        yield pb.TranscribeResponse(result=self._result(hit, current_trace_id(), cache_hit=True))

    def _check_upload_size(self, size: int) -> None:
        if size > self._max_upload_bytes:
            raise LimitExceeded(
                f"the upload is larger than the limit of {self._max_upload_bytes} bytes",
                metadata={"limit_bytes": str(self._max_upload_bytes)},
            )

    async def receive(self, request_iterator, path: Path, meter: UploadMeter) -> int:
        """Spool the rest of the request stream to `path`; a cut-off upload is refused."""
        # The quota check walks the spool directories once, at the start (a short blocking call).
        with self._quota.upload(meter.declared, path) as claim, open(path, "wb") as out:
            async for request in request_iterator:
                if request.WhichOneof("payload") != "content":
                    raise InvalidInput(
                        "config may appear only once, as the first message", field="config"
                    )
                meter.add(len(request.content))
                self._check_upload_size(meter.received)
                claim.add(len(request.content))
                out.write(request.content)
        if meter.declared and meter.received != meter.declared:
            # A cancelled caller's notice cancels this task during the pause; a caller that
            # really half-closed early (a bug) is told after it.
            await asyncio.sleep(CANCEL_NOTICE_GRACE_S)
        size = meter.finish(grace_s=0)  # a cancelled or cut-off upload is never transcribed
        if size == 0:
            raise InvalidInput("the upload is empty: no file content was sent", field="content")
        return size

    def _timeout(self, context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None or remaining > _NO_DEADLINE_S else max(remaining, 0.0)

    async def _run(
        self, upload: Path, options: ChainOptions, context, cache_key: str | None = None
    ) -> AsyncIterator[pb.TranscribeResponse]:
        span = trace.get_current_span()
        caller = self._caller_key(context)
        span.set_attributes(
            {
                "asr.queue.depth_at_arrival": self.admission.waiting,
                "asr.queue.running_at_arrival": self.admission.running,
            }
        )
        async with self.admission.slot(caller, self._timeout(context)) as waited:
            span.set_attribute("asr.queue.wait_s", round(waited, 4))
            async for message in self._run_admitted(upload, options, cache_key):
                yield message

    async def _run_admitted(
        self, upload: Path, options: ChainOptions, cache_key: str | None
    ) -> AsyncIterator[pb.TranscribeResponse]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stages = self._stages_factory()
        trace_id = current_trace_id()

        def emit(stage: str, event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (stage, event))

        chain = asyncio.ensure_future(
            in_executor(self._chains, run_chain, upload, options, stages, emit, trace_id)
        )
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, chain}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                for message in self._event_message(*getter.result()):
                    yield message
            while not events.empty():  # progress that landed just before the end
                for message in self._event_message(*events.get_nowait()):
                    yield message
            result = chain.result()  # the chain's own error (already a MeshError) when it failed
            log.info(
                "transcribed %r: %.1f s of audio in %.2f s, %d segments, %d speakers",
                options.filename,
                result.audio_duration,
                result.seconds,
                len(result.merged.segments),
                len(result.merged.speakers),
            )
            if self._cache is not None:
                await in_executor(self._io, self._cache.store, cache_key, result)
            for message in self._transcript(result):
                yield message
            yield pb.TranscribeResponse(result=self._result(result, trace_id))
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not chain.done():  # the caller left or the server is stopping: stop downstream work
                stages.cancel()
                chain.add_done_callback(_swallow)

    def _event_message(self, stage: str, event) -> list[pb.TranscribeResponse]:
        if isinstance(event, MediaReport):
            return [pb.TranscribeResponse(media_info=convert.media_to_proto(event))]
        return [self._progress(stage, event)]

    @staticmethod
    def _progress(stage: str, update: ProgressUpdate) -> pb.TranscribeResponse:
        return pb.TranscribeResponse(progress=convert.progress_to_proto(STAGE_ENUMS[stage], update))

    @staticmethod
    def _transcript(result: ChainResult) -> Iterator[pb.TranscribeResponse]:
        """The transcript as many small messages: segments, then documents in pieces."""
        for segment in result.merged.segments:
            yield pb.TranscribeResponse(segment=segment)
        for document in result.merged.documents:
            pieces = [
                document.content[i : i + DOCUMENT_CHUNK_CHARS]
                for i in range(0, len(document.content), DOCUMENT_CHUNK_CHARS)
            ] or [""]
            for index, piece in enumerate(pieces):
                yield pb.TranscribeResponse(
                    document_chunk=pb.DocumentChunk(
                        format=FORMAT_ENUMS[document.format],
                        file_extension=document.file_extension,
                        media_type=document.media_type,
                        content=piece,
                        last=index == len(pieces) - 1,
                    )
                )

    @staticmethod
    def _result(result: ChainResult, trace_id: str, cache_hit: bool = False) -> pb.TranscribeResult:
        trace.get_current_span().set_attributes(
            {
                "asr.audio.duration_s": result.audio_duration,
                "asr.rtf": result.seconds / result.audio_duration if result.audio_duration else 0.0,
                "asr.model": result.transcript.model,
            }
        )
        return pb.TranscribeResult(
            trace_id=trace_id,
            language_code=result.transcript.language_code,
            audio_duration=convert.duration(result.audio_duration),
            speakers=result.merged.speakers,
            model=result.transcript.model,
            diarization_backend=result.diarization.backend if result.diarization else "",
            processing_duration=convert.duration(result.seconds),
            segment_count=len(result.merged.segments),
            document_count=len(result.merged.documents),
            cache_hit=cache_hit,
        )
