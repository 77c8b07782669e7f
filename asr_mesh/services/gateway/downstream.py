"""gRPC adapters for the chain's stages: streaming, per-hop deadlines, retries, cancellation.

One `GrpcStages` serves one gateway request. Every hop is retried with tenacity on UNAVAILABLE
only (at most 3 attempts in total); a retry replays the whole stream, which is possible because
the gateway keeps the spooled upload and the decoded PCM until the request ends. Failures come
back as the typed exceptions of `asr_mesh.services.common.errors`, so the caller sees the downstream
service's own sentence.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from asr.common.v1 import audio_pb2, options_pb2
from asr.diarization.v1 import diarization_service_pb2 as dia_pb
from asr.diarization.v1 import diarization_service_pb2_grpc as dia_grpc
from asr.merge.v1 import merge_service_pb2 as merge_pb
from asr.merge.v1 import merge_service_pb2_grpc as merge_grpc
from asr.preprocess.v1 import preprocess_service_pb2 as pre_pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pre_grpc
from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import MediaReport, ProgressUpdate
from asr_mesh.services.common.errors import (
    Cancelled,
    DeadlineExceeded,
    DependencyFailed,
    InternalError,
    UploadStalled,
    from_rpc_error,
)
from asr_mesh.services.common.options import FORMAT_NAMES
from asr_mesh.services.common.pcm import DEFAULT_CHUNK_BYTES, pcm_duration
from asr_mesh.services.common.retry import is_unavailable, retrying
from asr_mesh.services.common.security import open_channel
from asr_mesh.services.common.telemetry import traced_channel
from asr_mesh.services.gateway.availability import ServiceNotConfigured
from asr_mesh.services.gateway.fanout import PCM16K, FanOut, FanoutPolicy
from asr_mesh.services.gateway.pcm_source import GrowingPcm, PcmSource, as_source
from asr_mesh.services.gateway.pipeline import (
    ChainOptions,
    Decoded,
    Diarization,
    Merged,
    ProgressSink,
    RenderedDocument,
    Transcript,
)
from asr_mesh.services.gateway.replicas import ReplicaPool, round_robin_target

UPLOAD_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class Deadlines:
    """Per-hop deadlines: a fixed allowance plus seconds per second of audio."""

    preprocess_s: float = 1800.0
    base_s: float = 60.0
    transcription_per_audio_s: float = 2.0
    diarization_per_audio_s: float = 1.0
    merge_s: float = 60.0

    def transcription(self, audio_s: float) -> float:
        return self.base_s + self.transcription_per_audio_s * audio_s

    def diarization(self, audio_s: float) -> float:
        return self.base_s + self.diarization_per_audio_s * audio_s


_CONNECTION_LOST = (
    "socket closed",
    "connection reset",
    "broken pipe",
    "goaway",
    "recvmsg",
    "stream removed",
    "connection aborted",
    "endpoint closing",
)


def died_under_call(err: grpc.RpcError) -> bool:
    """True when an UNAVAILABLE call had reached its service and the connection then went away
    under it (a kill -9: "Socket closed", "Connection reset"), as opposed to a call that never
    connected or a service that answered UNAVAILABLE itself (both safe to retry)."""
    details = (err.details() or "").lower() if hasattr(err, "details") else ""
    return any(marker in details for marker in _CONNECTION_LOST)


def transcription_config(
    options: options_pb2.TranscriptionOptions, pcm_bytes: int
) -> tr_pb.TranscriptionConfig:
    """The TranscriptionConfig of a request's transcription options (whole file, or each
    fan-out chunk). The one place they become the transcription service's request; the flat
    fields are those every transcription replica reads, old or new."""
    return tr_pb.TranscriptionConfig(
        language_code=options.language_code,
        model=options.model,
        format=PCM16K,
        beam_size=options.beam_size,
        initial_prompt=options.initial_prompt,
        temperatures=options.temperatures,
        best_of=options.best_of,
        hotwords=options.hotwords,
        profile=options.quality_profile,
        pcm_size_bytes=pcm_bytes,
    )


def diarization_config(
    options: options_pb2.DiarizationOptions, pcm_bytes: int
) -> dia_pb.DiarizationConfig:
    """The DiarizationConfig of a request's diarization options."""
    return dia_pb.DiarizationConfig(
        format=PCM16K,
        num_speakers=options.num_speakers,
        min_speakers=options.min_speakers,
        max_speakers=options.max_speakers,
        pcm_size_bytes=pcm_bytes,
    )


_Stub = TypeVar("_Stub")


def _configured(stub: _Stub | None, service: str) -> _Stub:
    """The service's stub; a service this gateway has no address for is refused in one sentence
    (otherwise the call would fail on the missing stub as an internal error)."""
    if stub is None:
        raise ServiceNotConfigured(
            f"this gateway has no {service} service (ASR_GATEWAY_{service.upper()}_ADDRESS is "
            "empty), so it cannot run this request",
            metadata={"service": service},
        )
    return stub


def _require(result, service: str):
    if result is None:
        raise InternalError(f"the {service} service closed its stream without a result")
    return result


class Downstream:
    """Long-lived traced channels to the four services (shared by all requests)."""

    def __init__(
        self,
        preprocess: str,
        transcription: str,
        diarization: str,
        merge: str,
        max_message_bytes: int = 64 << 20,
        credentials: grpc.ChannelCredentials | None = None,
        fanout: FanoutPolicy | None = None,
    ):
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Spread calls over every replica behind a headless Kubernetes service.
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.enable_retries", 0),  # tenacity owns retries, so they are visible in traces
        ]
        # An empty address is a backend this gateway does not have (refused before any call).
        # `credentials`: TLS with the gateway's client certificate
        # (asr_mesh.services.common.security). `transcription` may list several replicas
        # ("host:port,host:port"): one round-robin channel over them for whole-file calls, and one
        # channel per replica for fan-out.
        self._raw = [
            open_channel(target, options, credentials) if target else None
            for target in (
                preprocess,
                round_robin_target(transcription) if transcription else "",
                diarization,
                merge,
            )
        ]
        self.fanout = fanout
        self.replicas = (
            ReplicaPool(transcription, options, credentials) if transcription and fanout else None
        )
        channels = [traced_channel(ch) if ch else None for ch in self._raw]
        self.preprocess = pre_grpc.PreprocessServiceStub(channels[0]) if channels[0] else None
        self.transcription = tr_grpc.TranscriptionServiceStub(channels[1]) if channels[1] else None
        self.diarization = dia_grpc.DiarizationServiceStub(channels[2]) if channels[2] else None
        self.merge = merge_grpc.MergeServiceStub(channels[3]) if channels[3] else None

    def close(self) -> None:
        for channel in self._raw:
            if channel:
                channel.close()
        if self.replicas is not None:
            self.replicas.close()


class GrpcStages:
    """The chain's stages for one request, over `Downstream` channels."""

    def __init__(self, downstream: Downstream, deadlines: Deadlines):
        self._d = downstream
        self._deadlines = deadlines
        self._calls: list[grpc.Call] = []
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    # -- plumbing -------------------------------------------------------------------------

    def _track(self, call):
        with self._lock:
            if self._cancelled.is_set():
                call.cancel()
                raise Cancelled("the request was cancelled")
            self._calls.append(call)
        return call

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            for call in self._calls:
                call.cancel()

    def _stream(self, service: str, invoke, consume, total_s: float, streaming: bool = True):
        """Run a call under the retry policy with one deadline for all attempts.

        `invoke(timeout)` starts the call; `consume` reads a fresh stream per attempt. A stream
        is retried only while nothing has come back on it: past that point the service was
        working on the request, and replaying it elsewhere could spread whatever went wrong.
        """
        deadline = time.monotonic() + total_s
        answered = threading.Event()
        reached = threading.Event()  # the service had the call when it failed (it died under it)

        def watched(call):
            for response in call:
                answered.set()
                yield response

        try:
            for attempt in retrying(
                retry_if=lambda: not answered.is_set() and not reached.is_set()
            ):
                with attempt:
                    if self._cancelled.is_set():
                        raise Cancelled("the request was cancelled")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceeded(f"the {service} stage ran out of time after retries")
                    call = self._track(invoke(remaining))
                    try:
                        return consume(watched(call) if streaming else call)
                    except grpc.RpcError as err:
                        if is_unavailable(err) and died_under_call(err):
                            reached.set()
                        raise
        except (grpc.RpcError, grpc.FutureCancelledError) as err:
            if self._cancelled.is_set() or isinstance(err, grpc.FutureCancelledError):
                raise Cancelled("the request was cancelled") from None
            if (answered.is_set() or reached.is_set()) and is_unavailable(err):
                raise DependencyFailed(
                    f"the {service} service failed while working on this request "
                    f"({err.details()}); it was not retried, as replaying it could fail the same "
                    "way"
                ) from None
            error = from_rpc_error(err, service=service)
            # the gateway's own upload to it stalled, not the caller's
            if isinstance(error, UploadStalled):
                raise DependencyFailed(
                    f"the {service} service gave up waiting for the gateway's audio: "
                    f"{error.message}"
                ) from None
            raise error from None

    @staticmethod
    def _progress(msg) -> ProgressUpdate:
        return ProgressUpdate(
            fraction=msg.fraction,
            audio_processed=convert.seconds(msg.audio_processed),
            audio_total=convert.seconds(msg.audio_total),
            eta=convert.seconds(msg.eta),
            message=msg.message,
        )

    # -- stages ---------------------------------------------------------------------------

    streams_pcm = True
    """`run_chain` may start the branches on `preprocess_into`'s PCM before decoding ends."""

    def new_pcm(self, upload: Path) -> GrowingPcm:
        """A PCM file in the request's spool directory for `preprocess_into` to fill."""
        handle, name = tempfile.mkstemp(prefix="pcm-", suffix=".s16le", dir=upload.parent)
        os.close(handle)
        return GrowingPcm(Path(name))

    def preprocess(self, upload: Path, options: ChainOptions, progress: ProgressSink) -> Decoded:
        pcm = self.new_pcm(upload)
        try:
            return self.preprocess_into(upload, options, progress, pcm)
        except BaseException as exc:
            pcm.fail(exc)
            raise
        finally:
            pcm.close()

    def preprocess_into(
        self, upload: Path, options: ChainOptions, progress: ProgressSink, pcm: GrowingPcm
    ) -> Decoded:
        """Decode `upload` into `pcm` (readers may follow the writing), then map it.

        PCM goes to the request's spool directory, not the heap: an hour is 115 MB, and both
        branches read the same file. A retry happens only before any response (see `_stream`),
        so no attempt ever rewrites bytes a branch has read.
        """
        stub = _configured(self._d.preprocess, "preprocess")

        def requests() -> Iterator[pre_pb.PreprocessRequest]:
            audio = options.recognition.audio
            yield pre_pb.PreprocessRequest(
                config=pre_pb.PreprocessConfig(
                    filename=options.filename,
                    loudness_normalization=audio.loudness_normalization,
                    trim_silence=audio.trim_silence,
                    upload_size_bytes=upload.stat().st_size,
                )
            )
            with open(upload, "rb") as source:
                while piece := source.read(UPLOAD_CHUNK_BYTES):
                    yield pre_pb.PreprocessRequest(content=piece)

        def consume(stream) -> Decoded:
            media, written, summary = MediaReport(), 0, None
            for response in stream:
                kind = response.WhichOneof("payload")
                if kind == "media_info":
                    info = response.media_info
                    media = MediaReport(
                        container=info.container,
                        codec=info.codec,
                        sample_rate_hz=info.sample_rate_hz,
                        channels=info.channels,
                        duration=convert.seconds(info.duration),
                        bit_rate=info.bit_rate,
                        size_bytes=info.size_bytes,
                        has_video=info.has_video,
                        estimated_processing=convert.seconds(info.estimated_processing),
                    )
                    pcm.announce(media.duration)
                    progress(media)
                    progress(
                        ProgressUpdate(0.0, 0.0, media.duration, message=f"decoding {media.codec}")
                    )
                elif kind == "audio":
                    pcm.write(response.audio.pcm)
                    written += len(response.audio.pcm)
                    done = pcm_duration(written)
                    progress(
                        ProgressUpdate(
                            done / media.duration if media.duration else 0.0, done, media.duration
                        )
                    )
                elif kind == "summary":
                    summary = response.summary
            summary = _require(summary, "preprocess")
            if summary.pcm_bytes != written:
                raise InternalError(
                    f"the preprocess service announced {summary.pcm_bytes} PCM bytes "
                    f"but sent {written}"
                )
            pcm.finish()
            return Decoded(media=media, pcm=pcm.mapped(), duration=pcm_duration(written))

        return self._stream(
            "preprocess",
            lambda timeout: stub.Preprocess(requests(), timeout=timeout),
            consume,
            self._deadlines.preprocess_s,
        )

    def transcribe(
        self, pcm: bytes | memoryview | PcmSource, options: ChainOptions, progress: ProgressSink
    ) -> Transcript:
        source = as_source(pcm)
        duration = source.duration_hint
        # Still being decoded: the size is not known yet, so it is not declared.
        config = transcription_config(
            options.recognition.transcription, source.size if source.complete else 0
        )
        policy, replicas = self._d.fanout, self._d.replicas
        if policy is not None and replicas is not None and policy.applies(duration):
            return self._fan_out(source, config, policy, replicas, progress)
        stub = _configured(self._d.transcription, "transcription")

        def requests() -> Iterator[tr_pb.TranscribeRequest]:
            yield tr_pb.TranscribeRequest(config=config)
            for piece in source.chunks(DEFAULT_CHUNK_BYTES):
                yield tr_pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=piece))

        def consume(stream) -> Transcript:
            segments, result = [], None
            for response in stream:
                kind = response.WhichOneof("payload")
                if kind == "segment":
                    segments.append(response.segment)  # to merge as it came
                elif kind == "progress":
                    progress(self._progress(response.progress))
                else:
                    result = response.result
            result = _require(result, "transcription")
            return Transcript(
                segments=segments, language_code=result.language_code, model=result.model
            )

        return self._stream(
            "transcription",
            lambda timeout: stub.Transcribe(requests(), timeout=timeout),
            consume,
            self._deadlines.transcription(duration),
        )

    def _fan_out(
        self,
        pcm: PcmSource,
        config: tr_pb.TranscriptionConfig,
        policy: FanoutPolicy,
        replicas: ReplicaPool,
        progress: ProgressSink,
    ) -> Transcript:
        """Long audio in chunks over every transcription replica (see
        `asr_mesh.services.gateway.fanout`)."""
        fanout = FanOut(
            replicas,
            policy,
            window_deadline=self._deadlines.transcription,
            track=self._track,
            cancelled=self._cancelled,
        )
        segments, result = fanout.transcribe(pcm, config, progress)
        return Transcript(segments=segments, language_code=result.language_code, model=result.model)

    def diarize(
        self, pcm: bytes | memoryview | PcmSource, options: ChainOptions, progress: ProgressSink
    ) -> Diarization:
        stub = _configured(self._d.diarization, "diarization")
        source = as_source(pcm)
        config = diarization_config(
            options.recognition.diarization, source.size if source.complete else 0
        )

        def requests() -> Iterator[dia_pb.DiarizeRequest]:
            yield dia_pb.DiarizeRequest(config=config)
            for piece in source.chunks(DEFAULT_CHUNK_BYTES):
                yield dia_pb.DiarizeRequest(audio=audio_pb2.AudioChunk(pcm=piece))

        def consume(stream) -> Diarization:
            result = None
            for response in stream:
                if response.WhichOneof("payload") == "progress":
                    progress(self._progress(response.progress))
                else:
                    result = response.result
            result = _require(result, "diarization")
            return Diarization(
                turns=[convert.turn_from_proto(t) for t in result.exclusive_turns],
                speaker_count=result.speaker_count,
                backend=result.backend,
            )

        return self._stream(
            "diarization",
            lambda timeout: stub.Diarize(requests(), timeout=timeout),
            consume,
            self._deadlines.diarization(source.duration_hint),
        )

    def merge(
        self,
        transcript: Transcript,
        diarization: Diarization | None,
        options: ChainOptions,
        duration: float,
        trace_id: str,
    ) -> Merged:
        stub = _configured(self._d.merge, "merge")
        output = options.recognition.output
        request = merge_pb.MergeRequest(
            segments=transcript.segments,
            turns=[convert.turn_to_proto(t) for t in (diarization.turns if diarization else ())],
            formats=output.formats,
            language_code=transcript.language_code,
            audio_duration=convert.duration(duration),
            speaker_names=output.speaker_names,
            recording_id=options.recording_id,
            trace_id=trace_id,
            inverse_text_normalization=output.inverse_text_normalization,
        )

        response = self._stream(
            "merge",
            lambda timeout: stub.Merge.future(request, timeout=timeout),
            lambda future: future.result(),
            self._deadlines.merge_s,
            streaming=False,  # merge is a pure function of its request: always safe to repeat
        )
        return Merged(
            segments=list(response.segments),
            speakers=list(response.speakers),
            documents=[
                RenderedDocument(
                    FORMAT_NAMES.get(d.format, "json"), d.content, d.file_extension, d.media_type
                )
                for d in response.documents
            ],
        )
