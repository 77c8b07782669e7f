"""A small Python client for the gateway: stream a file in, get events and the result back.

Failures come back as the typed exceptions of `asr_mesh.client.errors` (InvalidAudio,
LimitExceeded, Overloaded, DependencyUnavailable, ...) carrying the service's own sentence.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO, TypeVar

import grpc
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from asr.common.v1 import audio_pb2, document_pb2, options_pb2, quality_pb2, streaming_pb2
from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.gateway.v1 import jobs_pb2 as jobs_pb
from asr.gateway.v1 import jobs_pb2_grpc as jobs_grpc
from asr.gateway.v1 import streaming_pb2 as gw_streaming_pb2
from asr_mesh.client.errors import (
    DeadlineExceeded,
    DependencyUnavailable,
    InternalError,
    InvalidInput,
    Overloaded,
)
from asr_mesh.client.flat_fields import FLAT_FIELDS
from asr_mesh.client.security import client_channel
from asr_mesh.client.status import from_rpc_error
from asr_mesh.client.tracing import traced_channel

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_LANGUAGE",
    "FINAL_JOB_STATES",
    "FLAT_FIELDS",
    "FORMATS",
    "GatewayClient",
    "GatewayUnreachable",
    "StreamOptions",
    "TranscribeOptions",
    "Transcription",
    "UPLOAD_CHUNK_BYTES",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

UPLOAD_CHUNK_BYTES = 256 * 1024
DEFAULT_ATTEMPTS = 6
DEFAULT_LANGUAGE = "pt-BR"
"""BCP-47 language the client asks for when the caller names none (the one place it is
written on the client side; the server has its own, asr_mesh/services/common/options.py)."""
FORMATS = {
    "json": document_pb2.OUTPUT_FORMAT_JSON,
    "srt": document_pb2.OUTPUT_FORMAT_SRT,
    "vtt": document_pb2.OUTPUT_FORMAT_VTT,
    "txt": document_pb2.OUTPUT_FORMAT_TXT,
    "rttm": document_pb2.OUTPUT_FORMAT_RTTM,
}


@dataclass
class TranscribeOptions:
    """What to ask the mesh for: `asr.common.v1.RecognitionOptions` as flat Python fields
    (`recognition_options` builds the message), plus the per-request `no_cache`."""

    language_code: str = DEFAULT_LANGUAGE
    diarize: bool = False
    num_speakers: int = 0
    min_speakers: int = 0
    max_speakers: int = 0
    model: str = ""
    formats: tuple[str, ...] = ("json",)
    speaker_names: dict[str, str] = field(default_factory=dict)
    temperatures: tuple[float, ...] = ()
    quality_profile: str = ""
    """Transcription profile: "max_quality", "balanced" or "fast"; "" = service default."""
    best_of: int = 0
    hotwords: str = ""
    inverse_text_normalization: bool = False
    """Write spoken PT-BR numbers, money, dates and times as digits ("doze por cento" → "12%")."""
    loudness_normalization: bool | None = None
    """EBU R128 loudness normalisation; None leaves it to the gateway (off by default)."""
    trim_silence: bool | None = None
    """Trim leading/trailing silence (shifts time offsets); None leaves it to the gateway (off)."""
    beam_size: int = 0
    """Beam size; 0 = the service default (from the profile)."""
    initial_prompt: str = ""
    """Text given to the model as previous context (vocabulary, style)."""
    no_cache: bool = False
    """Run the chain even when the gateway's result cache holds this file with these options."""

    def recognition_options(self) -> options_pb2.RecognitionOptions:
        """These options as the nested message the gateway reads (TranscribeConfig.options)."""
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise InvalidInput(
                f"unknown output format {unknown[0]!r}; choose from {', '.join(FORMATS)}"
            )
        return options_pb2.RecognitionOptions(
            audio=options_pb2.AudioOptions(
                loudness_normalization=self.loudness_normalization,
                trim_silence=self.trim_silence,
            ),  # None leaves the field unset: the gateway's default
            transcription=options_pb2.TranscriptionOptions(
                language_code=self.language_code,
                model=self.model,
                quality_profile=_profile(self.quality_profile),
                beam_size=self.beam_size,
                best_of=self.best_of,
                temperatures=self.temperatures,
                initial_prompt=self.initial_prompt,
                hotwords=self.hotwords,
            ),
            diarization=options_pb2.DiarizationOptions(
                enabled=self.diarize,
                num_speakers=self.num_speakers,
                min_speakers=self.min_speakers,
                max_speakers=self.max_speakers,
            ),
            output=options_pb2.OutputOptions(
                formats=[FORMATS[f] for f in self.formats],
                speaker_names=self.speaker_names,
                inverse_text_normalization=self.inverse_text_normalization,
            ),
        )

    def to_proto(self, filename: str) -> pb.TranscribeConfig:
        """The first message of a Transcribe or SubmitJob upload.

        Carries `options`, which a current gateway reads, and the same values in the deprecated
        flat fields, which it then ignores and a gateway from before `options` reads instead."""
        options = self.recognition_options()
        config = pb.TranscribeConfig(filename=filename, options=options, no_cache=self.no_cache)
        for flat, (part, name) in FLAT_FIELDS.items():
            group = getattr(options, part)
            if part == "audio" and not group.HasField(name):
                continue
            value = getattr(group, name)
            if isinstance(value, (str, bool, int, float)):
                setattr(config, flat, value)
            elif hasattr(value, "items"):
                getattr(config, flat).update(value)
            else:
                getattr(config, flat).extend(value)
        return config


@dataclass
class Transcription:
    """A finished transcription: the gateway's closing summary plus the streamed transcript.

    Attributes of `asr.gateway.v1.TranscribeResult` (trace_id, speakers, audio_duration, ...)
    are available directly on this object.
    """

    summary: pb.TranscribeResult
    segments: list[Any] = field(default_factory=list)
    """`asr.common.v1.Segment` messages in time order."""
    documents: list[Any] = field(default_factory=list)
    """`asr.common.v1.Document` messages, reassembled from their pieces, in the order requested."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "summary":  # copy/pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self.summary, name)


class GatewayUnreachable(DependencyUnavailable):
    """No connection to the gateway could be made (wrong address, nothing listening)."""


def _profile(name: str) -> int:
    if not name:
        return int(quality_pb2.QUALITY_PROFILE_UNSPECIFIED)
    try:
        enum_name = f"QUALITY_PROFILE_{name.strip().upper().replace('-', '_')}"
        return int(quality_pb2.QualityProfile.Value(enum_name))
    except ValueError:
        raise InvalidInput(
            f"unknown quality profile {name!r}; choose from max_quality, balanced, fast"
        ) from None


class GatewayClient:
    """Calls a running gateway. Use as a context manager or call `close()`."""

    def __init__(
        self,
        address: str,
        max_message_bytes: int = 64 << 20,
        connect_timeout_s: float = 15.0,
        max_attempts: int = DEFAULT_ATTEMPTS,
        *,
        ca_cert: str | Path | None = None,
        token: str | None = None,
    ):
        """`max_attempts`: see below; `ca_cert`: PEM file to verify a TLS gateway with (TLS only
        when given); `token`: bearer token sent as `authorization: Bearer ...` with every call
        (needs `ca_cert`)."""
        self.address = address
        self.max_attempts = max(1, max_attempts)
        """Attempts per call when the gateway answers RESOURCE_EXHAUSTED (queue full) or
        UNAVAILABLE (draining, a dependency down); waits follow its RetryInfo hint, with
        exponential backoff, and never past the call's `timeout_s`."""
        self._connect_timeout_s = connect_timeout_s
        self._reachable = False
        self._tls_hint = (
            (
                f"; with TLS: is the gateway's certificate signed by {ca_cert} and does it "
                "name this address? A plaintext gateway refuses TLS too"
            )
            if ca_cert
            else ""
        )
        self._channel = client_channel(
            address,
            ca_cert=ca_cert,
            token=token,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._stub = pb_grpc.GatewayServiceStub(traced_channel(self._channel))
        self._jobs = jobs_grpc.JobServiceStub(traced_channel(self._channel))

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _wait_until_reachable(self) -> None:
        """Fail fast (one clear error) instead of waiting forever on a wrong address."""
        if self._reachable:
            return
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=self._connect_timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()
            raise GatewayUnreachable(
                f"cannot reach the gateway at {self.address} "
                f"(no connection within {self._connect_timeout_s:.0f} s{self._tls_hint})"
            ) from None
        self._reachable = True

    def transcribe(
        self,
        path: Path,
        options: TranscribeOptions,
        on_event: Callable[[pb.TranscribeResponse], None] | None = None,
        timeout_s: float | None = None,
    ) -> Transcription:
        """Upload `path`, forward progress/media events to `on_event`, return the transcription.

        Raises `InvalidInput` for an unreadable file and `DependencyUnavailable` when the
        gateway cannot be reached within `connect_timeout_s` (given to the constructor).
        """
        config = options.to_proto(Path(path).name)
        self._wait_until_reachable()
        try:
            source = open(path, "rb")  # opened here, so an unreadable file fails before the call
        except OSError as exc:
            raise InvalidInput(f"cannot read the file: {exc.strerror}") from None
        with source:  # closed on every path, also when the call fails before reading it
            stat = os.fstat(source.fileno())
            regular = S_ISREG(stat.st_mode)
            if regular:  # declared, so a cut-off upload is refused, not transcribed
                config.upload_size_bytes = stat.st_size
            # A pipe cannot be sent twice: only a regular file is retried.
            return self._retrying(
                lambda left: self._transcribe(source, config, on_event, left),
                timeout_s,
                rewind=lambda: source.seek(0),
                attempts=None if regular else 1,
            )

    def transcribe_file(
        self,
        source: BinaryIO,
        filename: str,
        options: TranscribeOptions,
        size: int = 0,
        on_event: Callable[[pb.TranscribeResponse], None] | None = None,
        timeout_s: float | None = None,
    ) -> Transcription:
        """Like `transcribe`, from an open binary file object (an HTTP upload, say); `size`, when
        known, is declared so that a cut-off upload is refused. The caller closes `source`."""
        config = options.to_proto(filename)
        if size:
            config.upload_size_bytes = size
        self._wait_until_reachable()
        return self._transcribe(source, config, on_event, timeout_s)

    def stream(
        self,
        pcm_chunks: Iterable[bytes],
        options: StreamOptions | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[streaming_pb2.StreamingEvent]:
        """Real-time recognition: send 16 kHz mono s16le PCM chunks (20-500 ms each, paced by
        the caller) and iterate over asr.common.v1.StreamingEvent messages (interim, final,
        speech, summary) as they come. Failures raise the typed exceptions of
        `asr_mesh.client.errors`; stopping the iteration early cancels the session."""
        config = (options or StreamOptions()).to_proto()
        self._wait_until_reachable()

        def requests() -> Iterator[gw_streaming_pb2.StreamingTranscribeRequest]:
            yield gw_streaming_pb2.StreamingTranscribeRequest(config=config)
            for chunk in pcm_chunks:
                yield gw_streaming_pb2.StreamingTranscribeRequest(
                    audio=audio_pb2.AudioChunk(pcm=chunk)
                )

        call = self._stub.StreamingTranscribe(requests(), timeout=timeout_s)
        try:
            for response in call:
                yield response.event
        except grpc.RpcError as err:
            raise from_rpc_error(err, service="gateway") from None
        finally:
            call.cancel()  # no-op once finished

    def _transcribe(
        self,
        source: BinaryIO,
        config: Any,
        on_event: Callable[[Any], object] | None,
        timeout_s: float | None,
    ) -> Transcription:
        def requests() -> Iterator[pb.TranscribeRequest]:
            yield pb.TranscribeRequest(config=config)
            while piece := source.read(UPLOAD_CHUNK_BYTES):
                yield pb.TranscribeRequest(content=piece)

        try:
            return _collect(self._stub.Transcribe(requests(), timeout=timeout_s), on_event)
        except grpc.RpcError as err:
            raise from_rpc_error(err, service="gateway") from None

    # -- jobs (asr.gateway.v1.JobService) ----------------------------------------------------

    def submit_job(
        self, path: Path, options: TranscribeOptions, timeout_s: float | None = None
    ) -> jobs_pb.Job:
        """Upload `path` as a job; returns the queued job (its `job_id`) once the upload is
        stored."""
        config = options.to_proto(Path(path).name)
        self._wait_until_reachable()
        try:
            source = open(path, "rb")
        except OSError as exc:
            raise InvalidInput(f"cannot read the file: {exc.strerror}") from None
        with source:
            if S_ISREG(os.fstat(source.fileno()).st_mode):
                config.upload_size_bytes = os.fstat(source.fileno()).st_size

            return self._submit(source, config, timeout_s)

    def submit_job_file(
        self,
        source: BinaryIO,
        filename: str,
        options: TranscribeOptions,
        size: int = 0,
        timeout_s: float | None = None,
    ) -> jobs_pb.Job:
        """Like `submit_job`, from an open binary file object; the caller closes `source`."""
        config = options.to_proto(filename)
        if size:
            config.upload_size_bytes = size
        self._wait_until_reachable()
        return self._submit(source, config, timeout_s)

    def _submit(
        self, source: BinaryIO, config: pb.TranscribeConfig, timeout_s: float | None
    ) -> jobs_pb.Job:
        def requests() -> Iterator[jobs_pb.SubmitJobRequest]:
            yield jobs_pb.SubmitJobRequest(config=config)
            while piece := source.read(UPLOAD_CHUNK_BYTES):
                yield jobs_pb.SubmitJobRequest(content=piece)

        if not source.seekable():
            return self._call(self._jobs.SubmitJob, requests(), timeout_s).job
        start = source.tell()
        return self._retrying(
            lambda left: self._call(self._jobs.SubmitJob, requests(), left).job,
            timeout_s,
            rewind=lambda: source.seek(start),
        )

    def get_job(self, job_id: str, timeout_s: float | None = 30.0) -> jobs_pb.Job:
        return self._call(self._jobs.GetJob, jobs_pb.GetJobRequest(job_id=job_id), timeout_s).job

    def watch_job(self, job_id: str) -> Iterator[jobs_pb.Job]:
        """The job after each change, until it is final (the stream may be re-opened at any
        time)."""
        try:
            for response in self._jobs.WatchJob(jobs_pb.WatchJobRequest(job_id=job_id)):
                yield response.job
        except grpc.RpcError as err:
            raise from_rpc_error(err, service="gateway") from None

    def list_jobs(
        self, state: int = 0, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[jobs_pb.Job], str]:
        reply = self._call(
            self._jobs.ListJobs,
            jobs_pb.ListJobsRequest(state=state, page_size=page_size, page_token=page_token),
            30.0,
        )
        return list(reply.jobs), reply.next_page_token

    def cancel_job(self, job_id: str) -> jobs_pb.Job:
        return self._call(self._jobs.CancelJob, jobs_pb.CancelJobRequest(job_id=job_id), 30.0).job

    def delete_job(self, job_id: str) -> None:
        self._call(self._jobs.DeleteJob, jobs_pb.DeleteJobRequest(job_id=job_id), 30.0)

    def job_results(self, job_id: str, timeout_s: float | None = None) -> Transcription:
        """A succeeded job's transcript and documents (as `transcribe` returns them)."""
        try:
            return _collect(
                self._jobs.GetJobResults(
                    jobs_pb.GetJobResultsRequest(job_id=job_id), timeout=timeout_s
                ),
                None,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err, service="gateway") from None

    def wait_job(
        self,
        job_id: str,
        timeout_s: float = 3600.0,
        poll_s: float = 0.5,
        on_update: Callable[[jobs_pb.Job], None] | None = None,
    ) -> jobs_pb.Job:
        """Poll until the job is final. An unreachable gateway (a restart, a rolling update) is
        waited out, reconnecting, until `timeout_s`; then `DependencyUnavailable` is raised."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                poll_timeout_s = max(min(10.0, deadline - time.monotonic()), 0.5)
                job = self.get_job(job_id, timeout_s=poll_timeout_s)
            except DependencyUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise DependencyUnavailable(
                        f"gave up waiting for job {job_id}: {exc.message}"
                    ) from None
            else:
                if on_update:
                    on_update(job)
                if job.state in FINAL_JOB_STATES:
                    return job
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded(f"job {job_id} is not finished after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def _retrying(
        self,
        attempt: Callable[[float | None], T],
        timeout_s: float | None,
        *,
        rewind: Callable[[], object] = lambda: None,
        attempts: int | None = None,
    ) -> T:
        """`attempt(time_left)` under the retry policy: RESOURCE_EXHAUSTED and UNAVAILABLE are
        retried after max(the server's RetryInfo hint, exponential backoff with jitter), within
        `timeout_s` in total (None: only `max_attempts` bounds it)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        limit = attempts or self.max_attempts
        backoff = wait_exponential_jitter(multiplier=0.5, max=10.0)

        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        def remaining() -> float:  # only called once a deadline is known
            assert deadline is not None
            return max(deadline - time.monotonic(), 0.0)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            delay = max(getattr(error, "retry_after_s", 0.0) or 0.0, backoff(state))
            return delay if deadline is None else min(delay, max(remaining() - 0.05, 0.0))

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= limit:
                return True
            if deadline is None:
                return False
            error = state.outcome.exception() if state.outcome else None
            hint = getattr(error, "retry_after_s", 0.0) or 0.0
            return remaining() <= max(hint, 0.05)  # no time for another attempt after the wait

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.info(
                "gateway answered %s, retrying (attempt %d of %d): %s",
                type(error).__name__,
                state.attempt_number + 1,
                limit,
                getattr(error, "message", error),
            )

        for tried in Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with tried:
                if tried.retry_state.attempt_number > 1:
                    rewind()
                return attempt(left())
        raise AssertionError("unreachable")  # tenacity either returns or re-raises

    def _call(self, method: Callable[..., Any], request: Any, timeout_s: float | None) -> Any:
        try:
            return method(request, timeout=timeout_s)
        except grpc.RpcError as err:
            raise from_rpc_error(err, service="gateway") from None


def _retryable(error: BaseException) -> bool:
    """Queue full, draining, or a dependency briefly down: worth another attempt. A gateway that
    cannot be reached at all is not (the caller gets its sentence at once)."""
    return isinstance(error, Overloaded | DependencyUnavailable) and not isinstance(
        error, GatewayUnreachable
    )


FINAL_JOB_STATES = frozenset(
    {jobs_pb.JOB_STATE_SUCCEEDED, jobs_pb.JOB_STATE_FAILED, jobs_pb.JOB_STATE_CANCELLED}
)


def _collect(responses: Iterable[Any], on_event: Callable[[Any], object] | None) -> Transcription:
    """Reassemble a streamed transcript (Transcribe or GetJobResults) and check its counts."""
    segments: list[Any] = []
    documents: list[Any] = []
    pending: dict[int, list[str]] = {}
    for response in responses:
        kind = response.WhichOneof("payload")
        if kind == "segment":
            segments.append(response.segment)
        elif kind == "document_chunk":
            chunk = response.document_chunk
            pending.setdefault(chunk.format, []).append(chunk.content)
            if chunk.last:
                documents.append(
                    document_pb2.Document(
                        format=chunk.format,
                        content="".join(pending.pop(chunk.format)),
                        file_extension=chunk.file_extension,
                        media_type=chunk.media_type,
                    )
                )
        elif kind == "result":
            summary = response.result
            if pending or (len(segments), len(documents)) != (
                summary.segment_count,
                summary.document_count,
            ):
                raise InternalError(
                    f"incomplete transcript from the gateway: {len(segments)}/"
                    f"{summary.segment_count} segments, {len(documents)}/"
                    f"{summary.document_count} documents"
                )
            return Transcription(summary, segments, documents)
        elif on_event:
            on_event(response)
    raise from_rpc_error(_NoResult(), service="gateway")


@dataclass(frozen=True)
class StreamOptions:
    """Options of one streaming session (see asr.common.v1.StreamingConfig)."""

    language_code: str = DEFAULT_LANGUAGE
    model: str = ""
    profile: str = ""  # low_latency | balanced | accurate ("" = balanced)
    interim_results: bool = True
    endpoint_silence_s: float = 0.0  # 0 = the profile's
    endpointing: bool = True
    max_session_s: float = 0.0  # 0 = the service's maximum
    initial_prompt: str = ""

    def to_proto(self) -> streaming_pb2.StreamingConfig:
        try:
            name = (self.profile or "unspecified").strip().upper().replace("-", "_")
            profile = streaming_pb2.LatencyProfile.Value(f"LATENCY_PROFILE_{name}")
        except ValueError:
            raise InvalidInput(
                f"unknown latency profile {self.profile!r}; "
                "choose from low_latency, balanced, accurate"
            ) from None
        config = streaming_pb2.StreamingConfig(
            language_code=self.language_code,
            model=self.model,
            latency_profile=profile,
            interim_results=self.interim_results,
            initial_prompt=self.initial_prompt,
            format=audio_pb2.PcmFormat(
                sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
            ),
        )
        config.endpointing.disabled = not self.endpointing
        if self.endpoint_silence_s:
            config.endpointing.silence.FromMilliseconds(int(self.endpoint_silence_s * 1000))
        if self.max_session_s:
            config.max_session_duration.FromMilliseconds(int(self.max_session_s * 1000))
        return config


class _NoResult(grpc.RpcError):  # type: ignore[misc]  # grpc has no type information
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    def details(self) -> str:
        return "the gateway closed the stream without a result"
