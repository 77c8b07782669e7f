"""Thin gRPC layer over the merge core: proto ↔ domain, nothing else."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
from opentelemetry import trace

from asr.common.v1 import document_pb2
from asr.merge.v1 import merge_service_pb2 as pb
from asr.merge.v1 import merge_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.errors import InvalidInput
from asr_mesh.services.common.metrics import record_work
from asr_mesh.services.common.options import FORMAT_NAMES
from asr_mesh.services.common.telemetry import current_trace_id
from asr_mesh.services.merge.core import DocumentInfo, MergeOptions, OutputFormat, merge
from asr_mesh.services.merge.documents import render_documents

SERVICE = "merge"

_FROM_PROTO: dict[int, OutputFormat] = {
    value: OutputFormat(name) for value, name in FORMAT_NAMES.items()
}
_TO_PROTO = {fmt: value for value, fmt in _FROM_PROTO.items()}


def formats_from_proto(values) -> list[OutputFormat]:
    """Proto enum values → core formats; UNSPECIFIED or unknown values are the caller's error."""
    formats = []
    for i, value in enumerate(values):
        if value not in _FROM_PROTO:
            what = (
                "OUTPUT_FORMAT_UNSPECIFIED"
                if value == document_pb2.OUTPUT_FORMAT_UNSPECIFIED
                else f"unknown output format {value}"
            )
            raise InvalidInput(
                f"formats[{i}] is {what}; ask for JSON, SRT, VTT, TXT or RTTM",
                field=f"formats[{i}]",
            )
        formats.append(_FROM_PROTO[value])
    return formats


class MergeServicer(pb_grpc.MergeServiceServicer):
    """asr.merge.v1.MergeService over `core.merge` and `documents.render_documents`."""

    def __init__(self, options: MergeOptions):
        self._options = options

    def Merge(self, request: pb.MergeRequest, context: grpc.ServicerContext) -> pb.MergeResponse:
        """Attribute, re-cut and render; bad input surfaces as INVALID_ARGUMENT via the interceptor.

        The core opens the inner spans (`merge.attribute`, `merge.segment`, `merge.itn`, one
        `merge.render` per format); this RPC's span gets the request and result counts.
        """
        started = time.perf_counter()
        formats = formats_from_proto(request.formats)
        segments = [convert.segment_from_proto(s) for s in request.segments]
        turns = [convert.turn_from_proto(t) for t in request.turns]
        options = self._options
        if request.inverse_text_normalization:
            options = replace(options, inverse_text_normalization=True)
        duration = convert.seconds(request.audio_duration)
        span = trace.get_current_span()
        span.set_attributes(
            {
                "asr.merge.input_segments": len(segments),
                "asr.merge.words": sum(len(s.words) for s in segments),
                "asr.merge.turns": len(turns),
                "asr.merge.formats": [f.value for f in formats],
                "asr.merge.itn": options.inverse_text_normalization,
                "asr.audio.duration_s": duration,
            }
        )
        result = merge(segments, turns, options)
        span.set_attributes(
            {
                "asr.merge.segments": len(result.segments),
                "asr.speakers": len(result.speakers),
            }
        )
        info = DocumentInfo(
            language=request.language_code,
            duration=duration,
            recording_id=request.recording_id,
            # The caller's trace id is the one to quote; the active one is a fallback.
            trace_id=request.trace_id or current_trace_id(),
            speaker_names=dict(request.speaker_names),
        )
        documents = render_documents(result, formats, info, options)
        record_work(SERVICE, duration, time.perf_counter() - started)
        return pb.MergeResponse(
            segments=convert.segments_to_proto(result.segments),
            speakers=result.speakers,
            documents=[
                document_pb2.Document(
                    format=_TO_PROTO[d.format],
                    content=d.content,
                    file_extension=d.file_extension,
                    media_type=d.media_type,
                )
                for d in documents
            ],
        )
