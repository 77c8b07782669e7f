"""Thin gRPC layer over the preprocess core: proto ↔ domain, nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from opentelemetry import trace

from asr.common.v1 import audio_pb2
from asr.preprocess.v1 import preprocess_service_pb2 as pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert, metrics
from asr_mesh.services.common.domain import MediaReport
from asr_mesh.services.common.errors import Cancelled, InvalidInput
from asr_mesh.services.common.scheduler import rpc_watch
from asr_mesh.services.common.streams import UploadMeter
from asr_mesh.services.preprocess.core import (
    DecodeSummary,
    PreprocessOptions,
    Preprocessor,
    check_upload_size,
)
from asr_mesh.services.preprocess.ffmpeg import CancelToken

PCM_FORMAT = audio_pb2.PcmFormat(
    sample_rate_hz=16_000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)


def media_info(report: MediaReport) -> audio_pb2.MediaInfo:
    """MediaInfo for a probe report, the processing estimate included."""
    return convert.media_to_proto(report)


def _content(request_iterator, meter: UploadMeter) -> Iterator[bytes]:
    for request in request_iterator:
        if request.WhichOneof("payload") != "content":
            raise InvalidInput("config may appear only once, as the first message", field="config")
        meter.add(len(request.content))
        yield request.content
    meter.finish()  # a cancelled or cut-off upload is refused, never decoded as a shorter file


class PreprocessServicer(pb_grpc.PreprocessServiceServicer):
    def __init__(self, preprocessor: Preprocessor):
        self._preprocessor = preprocessor

    def Preprocess(
        self, request_iterator, context: grpc.ServicerContext
    ) -> Iterator[pb.PreprocessResponse]:
        """Config first, then file bytes in; MediaInfo, PCM chunks and a summary out."""
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidInput("the first message of the stream must carry config", field="config")
        config = first.config
        options = PreprocessOptions(
            filename=config.filename,
            loudness_normalization=config.loudness_normalization,
            trim_silence=config.trim_silence,
            chunk_size_bytes=config.chunk_size_bytes,
        )
        # The callback runs when the RPC ends for any reason; on a cancelled call it kills ffmpeg
        # at once instead of when the response loop next comes round.
        cancel = CancelToken()
        if not context.add_callback(cancel.cancel):
            raise Cancelled("the caller cancelled the request before the upload started")
        ended, timeout = rpc_watch(context)
        meter = UploadMeter(
            config.upload_size_bytes, ended, what="upload", field="config.upload_size_bytes"
        )
        # before any byte arrives
        check_upload_size(meter.declared, self._preprocessor.config.limits)
        span = trace.get_current_span()
        for event in self._preprocessor.run(
            options, _content(request_iterator, meter), cancel, timeout=timeout
        ):
            if isinstance(event, bytes):
                yield pb.PreprocessResponse(audio=audio_pb2.AudioChunk(pcm=event))
            elif isinstance(event, MediaReport):
                span.set_attributes(
                    {
                        "asr.media.container": event.container,
                        "asr.media.codec": event.codec,
                        "asr.media.size_bytes": event.size_bytes,
                        "asr.audio.declared_duration_s": event.duration,
                    }
                )
                yield pb.PreprocessResponse(media_info=media_info(event))
            elif isinstance(event, DecodeSummary):
                span.set_attributes(
                    {
                        "asr.audio.duration_s": event.audio_duration,
                        "asr.preprocess.decode_s": event.decode_seconds,
                    }
                )
                metrics.record_work("preprocess", event.decoded_duration, event.decode_seconds)
                yield pb.PreprocessResponse(
                    summary=pb.PreprocessSummary(
                        audio_duration=convert.duration(event.audio_duration),
                        pcm_bytes=event.pcm_bytes,
                        decode_duration=convert.duration(event.decode_seconds),
                        format=PCM_FORMAT,
                    )
                )
