"""Thin gRPC layer over the diarization core: proto ↔ domain, nothing else."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import nullcontext

import grpc
from opentelemetry import trace

from asr.common.v1 import progress_pb2
from asr.diarization.v1 import diarization_service_pb2 as pb
from asr.diarization.v1 import diarization_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import ProgressUpdate
from asr_mesh.services.common.pcm import pcm_duration, pcm_to_float32, read_config, read_pcm
from asr_mesh.services.common.scheduler import WorkQueue, rpc_watch
from asr_mesh.services.common.streams import UploadMeter
from asr_mesh.services.diarization.core import DiarizationOptions, DiarizationOutcome, Diarizer

STAGE = progress_pb2.STAGE_DIARIZATION


class DiarizationServicer(pb_grpc.DiarizationServiceServicer):
    def __init__(
        self, diarizer: Diarizer, max_audio_seconds: float, queue: WorkQueue | None = None
    ):
        self._diarizer = diarizer
        self._max_audio_seconds = max_audio_seconds
        self._queue = queue

    def Diarize(
        self, request_iterator, context: grpc.ServicerContext
    ) -> Iterator[pb.DiarizeResponse]:
        config = read_config(request_iterator)
        options = DiarizationOptions(
            num_speakers=config.num_speakers,
            min_speakers=config.min_speakers,
            max_speakers=config.max_speakers,
        )
        self._diarizer.check(options)  # impossible speaker counts are refused before queueing
        # Set when the caller goes away or the deadline passes: a queued request leaves the
        # queue, a running one stops at the backend's next batch.
        cancel, timeout = rpc_watch(context)
        meter = UploadMeter(
            config.pcm_size_bytes, cancel, what="audio stream", field="config.pcm_size_bytes"
        )
        # Admission before the upload: a refused request is answered at once, and a waiting
        # one holds no audio. The slot covers reading the audio and diarizing it.
        slot = self._queue.slot(cancel, timeout) if self._queue else nullcontext(0.0)
        with slot as waited:
            # Passed on without a local name, so `_diarize` can drop the PCM once converted.
            yield from self._diarize(
                read_pcm(request_iterator, max_audio_seconds=self._max_audio_seconds, meter=meter),
                options,
                cancel,
                waited,
            )

    def _diarize(
        self, pcm: bytearray, options: DiarizationOptions, cancel: threading.Event, waited: float
    ) -> Iterator[pb.DiarizeResponse]:
        span = trace.get_current_span()
        span.set_attributes(
            {"asr.audio.duration_s": pcm_duration(len(pcm)), "asr.queue_wait_s": waited}
        )
        audio = pcm_to_float32(pcm)
        del pcm  # an hour of 16-bit PCM is 115 MB; keep only the float copy the backend needs
        for event in self._diarizer.diarize(audio, options, cancel):
            if isinstance(event, ProgressUpdate):
                yield pb.DiarizeResponse(progress=convert.progress_to_proto(STAGE, event))
            elif isinstance(event, DiarizationOutcome):
                rtf = (
                    event.processing_seconds / event.audio_duration if event.audio_duration else 0.0
                )
                span.set_attributes(
                    {
                        "asr.diarization.backend": event.backend,
                        "asr.rtf": rtf,
                        "asr.diarization.speakers": event.speaker_count,
                    }
                )
                yield pb.DiarizeResponse(
                    result=pb.DiarizationResult(
                        exclusive_turns=[convert.turn_to_proto(t) for t in event.exclusive_turns],
                        overlaps=[convert.range_to_proto(r) for r in event.overlaps],
                        speaker_count=event.speaker_count,
                        backend=event.backend,
                        audio_duration=convert.duration(event.audio_duration),
                        processing_duration=convert.duration(event.processing_seconds),
                    )
                )
