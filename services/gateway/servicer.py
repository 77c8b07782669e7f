"""Thin gRPC layer of the gateway: spool the upload, run the chain, stream events back."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from opentelemetry import trace

from asr.common.v1 import document_pb2, progress_pb2, quality_pb2
from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from services.common import convert
from services.common.domain import MediaReport, ProgressUpdate
from services.common.errors import Cancelled, InternalError, InvalidInput, LimitExceeded
from services.common.scheduler import rpc_watch
from services.common.streams import UploadMeter
from services.common.telemetry import current_trace_id
from services.gateway.availability import Backends
from services.gateway.downstream import FORMAT_ENUMS, FORMAT_NAMES
from services.gateway.pipeline import ChainOptions, ChainResult, Stages, run_chain
from services.gateway.quota import SpoolQuota, unlimited
from services.gateway.result_cache import ResultCache, file_sha256

STAGE_ENUMS = {
    "upload": progress_pb2.STAGE_UPLOAD,
    "preprocess": progress_pb2.STAGE_PREPROCESS,
    "transcription": progress_pb2.STAGE_TRANSCRIPTION,
    "diarization": progress_pb2.STAGE_DIARIZATION,
    "merge": progress_pb2.STAGE_MERGE,
}
_DONE, _FAILED = object(), object()
DOCUMENT_CHUNK_CHARS = 256 * 1024
"""Characters per DocumentChunk: at most 1 MiB of UTF-8 whatever the text."""
_tracer = trace.get_tracer(__name__)
log = logging.getLogger(__name__)


def chain_options(config: pb.TranscribeConfig) -> ChainOptions:
    """Validate the caller's config and turn it into chain options."""
    formats = []
    for value in config.output_formats or [document_pb2.OUTPUT_FORMAT_JSON]:
        if value not in FORMAT_NAMES:
            raise InvalidInput(f"output format {value} is not one of json, srt, vtt, txt, rttm",
                               field="config.output_formats")
        formats.append(FORMAT_NAMES[value])
    for name in ("num_speakers", "min_speakers", "max_speakers"):
        if getattr(config, name) < 0:
            raise InvalidInput(f"{name} must not be negative", field=f"config.{name}")
    if not config.diarize:
        asked = [name for name in ("num_speakers", "min_speakers", "max_speakers") if getattr(config, name)]
        asked += ["speaker_names"] if config.speaker_names else []
        asked += ["RTTM output"] if document_pb2.OUTPUT_FORMAT_RTTM in config.output_formats else []
        if asked:  # silently ignoring them would hand back a transcript without what was asked
            raise InvalidInput(f"diarize=true is needed for {', '.join(asked)}", field="config.diarize")
    if config.min_speakers and config.max_speakers and config.min_speakers > config.max_speakers:
        raise InvalidInput(
            f"min_speakers ({config.min_speakers}) is larger than max_speakers ({config.max_speakers})",
            field="config.min_speakers",
        )
    return ChainOptions(
        filename=config.filename,
        language_code=config.language_code or "pt-BR",
        diarize=config.diarize,
        num_speakers=config.num_speakers,
        min_speakers=config.min_speakers,
        max_speakers=config.max_speakers,
        model=config.model,
        formats=tuple(dict.fromkeys(formats)),
        speaker_names=dict(config.speaker_names),
        beam_size=config.beam_size,
        initial_prompt=config.initial_prompt,
        temperatures=tuple(config.temperatures),
        quality_profile=_quality_profile(config.quality_profile),
        best_of=config.best_of,
        hotwords=config.hotwords,
        inverse_text_normalization=config.inverse_text_normalization,
        **{name: getattr(config, name) for name in ("loudness_normalization", "trim_silence")
           if config.HasField(name)},  # unset: ChainOptions' measured defaults
    )


def _quality_profile(value: int) -> str:
    """The profile's name for the chain ("" = the transcription service's default)."""
    if value not in quality_pb2.QualityProfile.values():
        raise InvalidInput(f"unknown quality profile {value}", field="config.quality_profile")
    if value == quality_pb2.QUALITY_PROFILE_UNSPECIFIED:
        return ""
    return quality_pb2.QualityProfile.Name(value).removeprefix("QUALITY_PROFILE_").lower()


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    def __init__(self, stages_factory: Callable[[], Stages], max_upload_bytes: int, spool_dir: Path | None,
                 cache: ResultCache | None = None, *, backends: Backends | None = None,
                 streaming=None, quota: SpoolQuota | None = None):
        self._stages_factory = stages_factory
        self._backends = backends or Backends({"diarization": "configured"})
        self._max_upload_bytes = max_upload_bytes
        self._spool_dir = spool_dir
        self._cache = cache
        self._streaming = streaming  # a services.gateway.streaming.StreamBridge
        self._quota = quota or unlimited()  # disk of all spools together (services/gateway/quota.py)

    def StreamingTranscribe(self, request_iterator, context):
        if self._streaming is None:
            raise InternalError("this gateway has no transcription service for streaming")
        return self._streaming(request_iterator, context)

    def Transcribe(self, request_iterator, context: grpc.ServicerContext) -> Iterator[pb.TranscribeResponse]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidInput("the first message of the stream must carry config", field="config")
        options = chain_options(first.config)
        self._backends.require_diarization(first.config)
        span = trace.get_current_span()
        span.set_attributes({"asr.diarize": options.diarize, "asr.formats": ",".join(options.formats)})
        ended, _ = rpc_watch(context)
        meter = UploadMeter(first.config.upload_size_bytes, ended, what="upload",
                            field="config.upload_size_bytes")
        self._check_upload_size(meter.declared)  # refused before a byte of it is sent
        spool = Path(tempfile.mkdtemp(prefix="asr-gateway-", dir=self._spool_dir))
        try:
            upload = spool / "upload"
            with _tracer.start_as_current_span("gateway.upload") as upload_span:
                size = self._receive(request_iterator, upload, meter)
                upload_span.set_attribute("asr.upload.bytes", size)
            span.set_attribute("asr.upload.bytes", size)
            yield self._progress("upload", ProgressUpdate(1.0, message=f"received {size} bytes"))
            yield from self._cached_run(upload, options, first.config.no_cache, context)
        finally:
            shutil.rmtree(spool, ignore_errors=True)

    def _cached_run(self, upload: Path, options: ChainOptions, no_cache: bool,
                    context) -> Iterator[pb.TranscribeResponse]:
        """Answer from the result cache when it holds this work, else run the chain (and keep it)."""
        if self._cache is None:
            yield from self._run(upload, options, context)
            return
        started = time.perf_counter()
        key = self._cache.key(file_sha256(upload), options)
        hit = self._cache.lookup(key, bypass=no_cache)
        trace.get_current_span().set_attribute("asr.cache.hit", hit is not None)
        if hit is None:
            yield from self._run(upload, options, context, cache_key=key)
            return
        hit = dataclasses.replace(hit, seconds=time.perf_counter() - started)
        log.info("transcribed %r from the result cache", options.filename)
        yield from self._transcript(hit)
        yield pb.TranscribeResponse(result=self._result(hit, current_trace_id(), cache_hit=True))

    def _check_upload_size(self, size: int) -> None:
        if size > self._max_upload_bytes:
            raise LimitExceeded(
                f"the upload is larger than the limit of {self._max_upload_bytes} bytes",
                metadata={"limit_bytes": str(self._max_upload_bytes)},
            )

    def _receive(self, request_iterator, path: Path, meter: UploadMeter) -> int:
        with self._quota.upload(meter.declared, path) as claim, open(path, "wb") as out:
            for request in request_iterator:
                if request.WhichOneof("payload") != "content":
                    raise InvalidInput("config may appear only once, as the first message", field="config")
                meter.add(len(request.content))
                self._check_upload_size(meter.received)
                claim.add(len(request.content))
                out.write(request.content)
        size = meter.finish()  # a cancelled or cut-off upload is never transcribed
        if size == 0:
            raise InvalidInput("the upload is empty: no file content was sent", field="content")
        return size

    def _run(self, upload: Path, options: ChainOptions, context,
             cache_key: str | None = None) -> Iterator[pb.TranscribeResponse]:
        events: queue.Queue = queue.Queue()
        stages = self._stages_factory()
        if not context.add_callback(stages.cancel):  # caller gone or RPC over: stop downstream work
            raise Cancelled("the caller cancelled the request before transcription started")
        trace_id = current_trace_id()

        def work() -> None:
            try:
                result = run_chain(upload, options, stages, lambda s, e: events.put((s, e)), trace_id)
                events.put((_DONE, result))
            except BaseException as exc:  # handed to the RPC thread, which raises it
                events.put((_FAILED, exc))

        worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True)
        worker.start()
        while True:
            stage, event = events.get()
            if stage is _DONE:
                log.info(
                    "transcribed %r: %.1f s of audio in %.2f s, %d segments, %d speakers",
                    options.filename, event.audio_duration, event.seconds,
                    len(event.merged.segments), len(event.merged.speakers),
                )
                if self._cache is not None:
                    self._cache.store(cache_key, event)
                yield from self._transcript(event)
                yield pb.TranscribeResponse(result=self._result(event, trace_id))
                return
            if stage is _FAILED:
                try:
                    raise event
                finally:  # the traceback holds the chain's frames (and the mapped PCM)
                    del event
            if isinstance(event, MediaReport):
                yield pb.TranscribeResponse(media_info=convert.media_to_proto(event))
            else:
                yield self._progress(stage, event)

    @staticmethod
    def _progress(stage: str, update: ProgressUpdate) -> pb.TranscribeResponse:
        return pb.TranscribeResponse(progress=convert.progress_to_proto(STAGE_ENUMS[stage], update))

    @staticmethod
    def _transcript(result: ChainResult) -> Iterator[pb.TranscribeResponse]:
        """The transcript as many small messages: segments, then documents in pieces."""
        for segment in result.merged.segments:
            yield pb.TranscribeResponse(segment=convert.segment_to_proto(segment))
        for document in result.merged.documents:
            pieces = [document.content[i:i + DOCUMENT_CHUNK_CHARS]
                      for i in range(0, len(document.content), DOCUMENT_CHUNK_CHARS)] or [""]
            for index, piece in enumerate(pieces):
                yield pb.TranscribeResponse(document_chunk=pb.DocumentChunk(
                    format=FORMAT_ENUMS[document.format], file_extension=document.file_extension,
                    media_type=document.media_type, content=piece, last=index == len(pieces) - 1,
                ))

    @staticmethod
    def _result(result: ChainResult, trace_id: str, cache_hit: bool = False) -> pb.TranscribeResult:
        trace.get_current_span().set_attributes({
            "asr.audio.duration_s": result.audio_duration,
            "asr.rtf": result.seconds / result.audio_duration if result.audio_duration else 0.0,
            "asr.model": result.transcript.model,
        })
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
