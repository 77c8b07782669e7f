"""Any audio/video upload → validated 16 kHz mono s16le PCM. Pure: no gRPC, no environment reads.

`Preprocessor.run` spools the upload into a private temporary directory (MP4/M4A with the moov
atom at the end cannot be demuxed from a pipe), probes it with ffprobe, checks the declared
length against the limits, then streams ffmpeg's PCM on as it comes while enforcing the limits
on the running decode. It yields one `MediaReport`, PCM chunks (`bytes`) and a closing
`DecodeSummary`. The temporary directory is gone when the generator finishes, fails or is
closed.

Corrupt-input rule (decided here, tested in tests/preprocess): a decode is refused when ffmpeg
exits with an error, when it yields no audio, when the decoded audio falls short of the
container's declared duration by more than max(0.5 s, 5 %) (not applied when ffprobe only
estimated the duration from the bit rate), or when the decoder reports more than 10 errors and
more than one per 6 s of decoded audio. A few decoder errors in a long file are tolerated, as
faster-whisper tolerates them, because real-world files often carry a damaged frame or two.
Since PCM is streamed while decoding runs, a refusal after the end of the decode comes after
some chunks were sent: callers must discard them when the stream ends in an error.

Decompression bombs (small files that decode to hours, headers that lie) are refused in three
places, cheapest first: before decoding, from what the container declares (a firm duration over
the limits, an estimated one over twice the limits, or a sample rate outside 1 kHz..768 kHz:
a WAV "recorded" at 1 Hz is resampled 16000-fold); during decoding, as soon as the PCM passes a
limit or runs to more than 4x the declared duration plus 10 minutes; and always by the decode's
wall-clock limit and the child's memory and CPU limits. PCM is streamed, never held whole, so the
service's own memory does not grow with the length of the audio.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from opentelemetry import trace

from asr_mesh.services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE, MediaReport
from asr_mesh.services.common.domain_errors import (
    InvalidAudio,
    InvalidInput,
    LimitExceeded,
    Overloaded,
)
from asr_mesh.services.common.pcm import DEFAULT_CHUNK_BYTES
from asr_mesh.services.common.scheduler import WorkQueue
from asr_mesh.services.preprocess import ffmpeg
from asr_mesh.services.preprocess.ffmpeg import CancelToken, ChildLimits, ProbeResult

BYTES_PER_SECOND = SAMPLE_RATE * BYTES_PER_SAMPLE
MIN_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 1024 * 1024

PADDING_TOLERANCE_S = 0.3
"""Decoded audio beyond the container's declared duration by up to this much is codec padding
(AAC's last frame, for example) and is cut; more than this means the declaration was wrong and
everything is kept."""

SHORTFALL_MIN_S = 0.5
SHORTFALL_FRACTION = 0.05
DECODE_ERRORS_MIN = 10
DECODE_ERRORS_SECONDS_PER_ERROR = 6.0

SPOOL_PREFIX = "asr-preprocess-"

MIN_SOURCE_RATE_HZ = 1_000
MAX_SOURCE_RATE_HZ = 768_000
"""Sample rates outside this range are refused as forged: real audio sits between 8 kHz
telephone and 768 kHz studio masters; a lower rate multiplies the PCM the resampler writes
(1 Hz → 16 kHz is a 16000-fold bomb) and an absurdly high one costs seconds of CPU per byte."""

ESTIMATE_SLACK = 2.0
"""A duration ffprobe only estimated (from size and bit rate) is refused before decoding when it
is over this many times a limit; nearer the limit the running decode decides."""

OVERRUN_FACTOR = 4.0
OVERRUN_SLACK_S = 600.0
"""A decode that runs past OVERRUN_FACTOR × the declared (or estimated) duration plus
OVERRUN_SLACK_S is stopped as a probable bomb: honest files, VBR MP3s without a Xing header
included, stay well inside it."""

_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class PreprocessLimits:
    """Per-request limits; each breach raises LimitExceeded naming the limit and its value."""

    max_upload_bytes: int = 2 << 30
    max_audio_seconds: float = 4 * 3600
    max_decoded_bytes: int = 1 << 30
    max_decode_seconds: float = 900.0
    probe_timeout_seconds: float = 30.0
    child_memory_bytes: int = 1 << 30


@dataclass(frozen=True)
class PreprocessorConfig:
    """How the service runs ffmpeg; built from settings by the server."""

    ffmpeg_path: str = "ffmpeg"
    ffprobe_path: str = "ffprobe"
    temp_root: Path | None = None
    limits: PreprocessLimits = field(default_factory=PreprocessLimits)
    loudnorm_target_lufs: float = -23.0
    silence_threshold_db: float = -50.0
    silence_padding_seconds: float = 0.1
    max_concurrent_jobs: int = 4
    max_queued: int = 2
    """Requests that may wait for a decode slot; beyond it RESOURCE_EXHAUSTED with a retry hint."""
    estimate_rtf: float = 0.0
    """Processing seconds per audio second of the configured model (0 = give no estimate)."""


@dataclass(frozen=True)
class PreprocessOptions:
    """What a caller may choose per request."""

    filename: str = ""
    loudness_normalization: bool = False
    trim_silence: bool = False
    chunk_size_bytes: int = 0


@dataclass(frozen=True)
class DecodeSummary:
    """Closing figures of one preprocessing run."""

    audio_duration: float
    pcm_bytes: int
    decode_seconds: float
    decoded_duration: float = 0.0
    """Audio ffmpeg produced, before trimming and padding cuts."""


# --------------------------------------------------------------------------- pure checks


def chunk_size(requested: int) -> int:
    """The PCM chunk size to use: 0 → 256 KiB; otherwise 64 KiB..1 MiB, whole samples."""
    if requested == 0:
        return DEFAULT_CHUNK_BYTES
    if not MIN_CHUNK_BYTES <= requested <= MAX_CHUNK_BYTES:
        raise InvalidInput(
            f"chunk_size_bytes must be 0 (default) or between {MIN_CHUNK_BYTES} and "
            f"{MAX_CHUNK_BYTES}, got {requested}",
            field="config.chunk_size_bytes",
        )
    return requested - requested % BYTES_PER_SAMPLE


def spool_name(filename: str) -> str:
    """Name of the spooled copy: a fixed stem plus the hint's extension when it is plain.

    The caller's name is never used as a path; its extension only helps ffmpeg's probe
    (raw AAC or MP3 without tags).
    """
    ext = Path(filename.replace("\\", "/")).suffix[1:] if filename else ""
    return f"upload.{ext.lower()}" if re.fullmatch(r"[A-Za-z0-9]{1,8}", ext) else "upload"


def _hms(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s"


def _size(num: int) -> str:
    return f"{num / (1 << 20):.1f} MiB" if num >= 1 << 20 else f"{num} bytes"


def check_upload_size(size: int, limits: PreprocessLimits) -> None:
    """Refuse an upload over max_upload_bytes."""
    if size > limits.max_upload_bytes:
        raise LimitExceeded(
            f"the upload is larger than the limit of {_size(limits.max_upload_bytes)} "
            "(max_upload_bytes)",
            metadata={"limit": "max_upload_bytes", "value": str(limits.max_upload_bytes)},
        )


def check_declared_duration(
    declared: float, limits: PreprocessLimits, source: str = "file", slack: float = 1.0
) -> None:
    """Refuse before decoding when the container declares more audio than the limits allow.

    `slack` > 1 is for durations that are only estimates: refuse only when far over a limit.
    """
    claims = (
        f"the {source} declares" if slack == 1.0 else f"the {source}'s size and bit rate suggest"
    )
    if declared > limits.max_audio_seconds * slack:
        raise LimitExceeded(
            f"{claims} {_hms(declared)} of audio, over the limit of "
            f"{_hms(limits.max_audio_seconds)} (max_audio_seconds)",
            metadata={"limit": "max_audio_seconds", "value": f"{limits.max_audio_seconds:g}"},
        )
    if declared * BYTES_PER_SECOND > limits.max_decoded_bytes * slack:
        raise LimitExceeded(
            f"{claims} {_hms(declared)} of audio, which decodes to more than the "
            f"limit of {_size(limits.max_decoded_bytes)} of PCM (max_decoded_bytes)",
            metadata={"limit": "max_decoded_bytes", "value": str(limits.max_decoded_bytes)},
        )


def check_decoded_so_far(decoded_bytes: int, limits: PreprocessLimits) -> None:
    """Refuse a running decode as soon as it passes a limit (decompression bombs, lying headers)."""
    if decoded_bytes > limits.max_decoded_bytes:
        raise LimitExceeded(
            f"the decoded audio passed the limit of {_size(limits.max_decoded_bytes)} of PCM "
            "(max_decoded_bytes)",
            metadata={"limit": "max_decoded_bytes", "value": str(limits.max_decoded_bytes)},
        )
    if decoded_bytes / BYTES_PER_SECOND > limits.max_audio_seconds:
        raise LimitExceeded(
            f"the decoded audio passed the limit of {_hms(limits.max_audio_seconds)} "
            "(max_audio_seconds)",
            metadata={"limit": "max_audio_seconds", "value": f"{limits.max_audio_seconds:g}"},
        )


def check_sample_rate(rate_hz: int, codec: str) -> None:
    """Refuse a source sample rate no real recording has (a forged header)."""
    if not MIN_SOURCE_RATE_HZ <= rate_hz <= MAX_SOURCE_RATE_HZ:
        raise InvalidAudio(
            f"the file's audio stream ({codec}) declares a sample rate of {rate_hz} Hz, outside "
            f"the {MIN_SOURCE_RATE_HZ}..{MAX_SOURCE_RATE_HZ} Hz this service accepts; its header "
            "is corrupt or forged"
        )


def check_overrun(decoded_seconds: float, declared: float) -> None:
    """Stop a decode that runs far past the declared duration (a lying header, a bomb)."""
    if declared > 0 and decoded_seconds > declared * OVERRUN_FACTOR + OVERRUN_SLACK_S:
        raise InvalidAudio(
            f"the file decodes to far more audio than it declares ({_hms(declared)} declared, "
            f"over {_hms(decoded_seconds)} decoded): refused as a probable decompression bomb"
        )


def estimate_processing_seconds(duration: float, rtf: float) -> float:
    """Expected processing time of `duration` seconds of audio at real-time factor `rtf`."""
    return max(duration, 0.0) * max(rtf, 0.0)


def check_wav_header(head: bytes, size: int, limits: PreprocessLimits) -> None:
    """Check what a WAV header claims against the limits and against the bytes actually sent."""
    declared = ffmpeg.wav_declared_data(head)
    if declared is None:
        return
    offset, data_bytes, byte_rate = declared
    check_declared_duration(data_bytes / byte_rate, limits, source="WAV header")
    held = max(size - offset, 0)
    if data_bytes > held + byte_rate // 100:  # a few ms of slack for odd padding
        raise InvalidAudio(
            "the file is truncated or corrupt: its WAV header declares "
            f"{_hms(data_bytes / byte_rate)} of audio but the file holds only "
            f"{_hms(held / byte_rate)}"
        )


def check_complete(
    decoded_seconds: float, probe: ProbeResult, decode_errors: int, first_error: str = ""
) -> None:
    """Apply the corrupt-input rule (see the module docstring) once ffmpeg has finished."""
    if decoded_seconds <= 0:
        detail = f" ({first_error})" if first_error else ""
        raise InvalidAudio(f"the file is truncated or corrupt: no audio could be decoded{detail}")
    declared = probe.report.duration
    if declared > 0 and not probe.duration_estimated:
        if declared - decoded_seconds > max(SHORTFALL_MIN_S, SHORTFALL_FRACTION * declared):
            raise InvalidAudio(
                f"the file is truncated or corrupt: it declares {_hms(declared)} of audio but "
                f"only {_hms(decoded_seconds)} could be decoded"
            )
    if (
        decode_errors > DECODE_ERRORS_MIN
        and decode_errors > decoded_seconds / DECODE_ERRORS_SECONDS_PER_ERROR
    ):
        detail = f" (first: {first_error})" if first_error else ""
        raise InvalidAudio(
            f"the file is truncated or corrupt: the decoder reported {decode_errors} errors in "
            f"{_hms(decoded_seconds)} of audio{detail}"
        )


# --------------------------------------------------------------------------- PCM shaping


class DurationCap:
    """Cuts codec padding past the declared duration, keeping everything if the excess is large."""

    def __init__(self, cap_bytes: int, tolerance_bytes: int):
        self._cap = cap_bytes if cap_bytes > 0 else None
        self._tolerance = tolerance_bytes
        self._passed = 0
        self._held = bytearray()

    def feed(self, data: bytes) -> bytes:
        """Pass on what lies within the declared duration; hold back a little beyond it."""
        if self._cap is None:
            return data
        if self._held:
            self._held += data
            if len(self._held) > self._tolerance:  # the declaration was wrong: give it all back
                out, self._held, self._cap = bytes(self._held), bytearray(), None
                return out
            return b""
        room = self._cap - self._passed
        if len(data) <= room:
            self._passed += len(data)
            return data
        self._passed = self._cap
        self._held += data[room:]
        if len(self._held) > self._tolerance:
            out, self._held, self._cap = data[:room] + bytes(self._held), bytearray(), None
            return out
        return data[:room]

    def finish(self) -> bytes:
        """End of stream: what was held back is padding and is dropped."""
        self._held.clear()  # within tolerance: padding
        return b""


class SilenceTrimmer:
    """Drops leading and trailing audio below a level, keeping a little padding.

    Done here rather than with ffmpeg's silenceremove: its end trimming either stops copying at
    the first long pause or needs areverse (the whole file in memory), and trimming in ffmpeg
    would hide the decoded length the corrupt-input rule compares with the declared one.
    Memory held is the current run of silence, bounded by the decode limits.
    """

    def __init__(self, threshold_db: float, padding_bytes: int):
        self._threshold = int(32768 * 10 ** (threshold_db / 20))
        self._padding = padding_bytes - padding_bytes % BYTES_PER_SAMPLE
        self._started = False
        self._pending = bytearray()  # silence not yet known to be followed by sound

    def feed(self, data: bytes) -> bytes:
        """Whole samples in; what is known to lie between the first and last sound out."""
        samples = np.frombuffer(data, dtype="<i2")
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > self._threshold)
        if not len(loud):
            self._pending += data
            if not self._started and len(self._pending) > self._padding:
                del self._pending[: len(self._pending) - self._padding]  # keep only the lead-in
            return b""
        first, last = int(loud[0]) * BYTES_PER_SAMPLE, (int(loud[-1]) + 1) * BYTES_PER_SAMPLE
        if self._started:
            out = bytes(self._pending) + data[:last]
        else:
            lead = bytes(self._pending) + data[:first]
            out = lead[-self._padding :] + data[first:last] if self._padding else data[first:last]
            self._started = True
        self._pending = bytearray(data[last:])
        return out

    def finish(self) -> bytes:
        """End of stream: keep only the padding of the trailing silence."""
        if not self._started:
            return b""
        return bytes(self._pending[: self._padding])


class Chunker:
    """Regroups PCM into chunks of a fixed size (the last one may be shorter)."""

    def __init__(self, size: int):
        self._size = size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add PCM; return the chunks now complete."""
        self._buf += data
        out = []
        while len(self._buf) >= self._size:
            out.append(bytes(self._buf[: self._size]))
            del self._buf[: self._size]
        return out

    def finish(self) -> list[bytes]:
        """End of stream: the shorter last chunk, if any."""
        out, self._buf = ([bytes(self._buf)] if self._buf else []), bytearray()
        return out


# --------------------------------------------------------------------------- the job


class Preprocessor:
    """Runs preprocessing jobs with a bounded number at a time.

    `on_queue(waiting, running)` is called whenever the admission queue changes (the server
    feeds its queue-depth and busy-worker gauges with it).
    """

    def __init__(
        self, config: PreprocessorConfig, on_queue: Callable[[int, int], None] | None = None
    ):
        self.config = config
        if config.temp_root is not None:
            config.temp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            # A configured root is this service's own (an emptyDir in Kubernetes): spool
            # directories found there were left by a predecessor killed without a chance to clean.
            for stale in config.temp_root.glob(f"{SPOOL_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
        # Like transcription's: a request waits its turn (first come, first served) instead of
        # being refused while a decode slot is busy; refused only when the queue is full.
        self._queue = WorkQueue(
            config.max_concurrent_jobs,
            config.max_queued,
            on_change=on_queue,
            typical_job_s=2.0,
            name="the preprocess service",
        )
        self._active: dict[Path, CancelToken] = {}
        self._idle = threading.Condition()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel running jobs (killing their children), wait for them, remove their spools.

        Called by `main()` after the server's grace period, so that a SIGTERM never leaves a
        spooled upload behind even if a job thread is slow to notice its cancellation.
        """
        with self._idle:
            jobs = list(self._active.items())
        for _, token in jobs:
            token.cancel()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._active and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            leftovers = list(self._active)
        for workdir in leftovers:
            shutil.rmtree(workdir, ignore_errors=True)

    @property
    def _child_limits(self) -> ChildLimits:
        lim = self.config.limits
        return ChildLimits(
            memory_bytes=lim.child_memory_bytes,
            cpu_seconds=int(max(lim.max_decode_seconds, lim.probe_timeout_seconds)) + 1,
        )

    def run(
        self,
        options: PreprocessOptions,
        content: Iterable[bytes],
        cancel: CancelToken | None = None,
        timeout: float | None = None,
    ) -> Iterator[MediaReport | bytes | DecodeSummary]:
        """Spool, probe, decode; yield MediaReport, PCM chunks, then DecodeSummary.

        Waits for a decode slot first (at most `timeout` s, None: no limit; a cancel leaves the
        queue at once); the upload is read only once admitted."""
        cancel = cancel or CancelToken()
        size = chunk_size(options.chunk_size_bytes)
        with self._queue.slot(cancel.event, timeout) as waited:
            trace.get_current_span().set_attribute("asr.queue_wait_s", round(waited, 4))
            yield from self._run_admitted(options, content, cancel, size)

    def _run_admitted(
        self,
        options: PreprocessOptions,
        content: Iterable[bytes],
        cancel: CancelToken,
        size: int,
    ) -> Iterator[MediaReport | bytes | DecodeSummary]:
        workdir = None
        try:
            workdir = Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX, dir=self.config.temp_root))
            with self._idle:
                self._active[workdir] = cancel
            with _tracer.start_as_current_span("preprocess.spool") as span:
                path, total, head = self._spool(content, workdir / spool_name(options.filename))
                span.set_attribute("asr.upload.bytes", total)
            started = time.monotonic()
            probe = self._probe(path, total, head, cancel)
            estimate = estimate_processing_seconds(probe.report.duration, self.config.estimate_rtf)
            probe.report.estimated_processing = max(estimate, 0.0)
            yield probe.report
            yield from self._decode(path, probe, options, size, cancel, started)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
                with self._idle:
                    self._active.pop(workdir, None)
                    self._idle.notify_all()

    def _spool(self, content: Iterable[bytes], path: Path) -> tuple[Path, int, bytes]:
        limits = self.config.limits
        total, head = 0, bytearray()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                for piece in content:
                    total += len(piece)
                    check_upload_size(total, limits)
                    if len(head) < 4096:
                        head += piece[: 4096 - len(head)]
                    out.write(piece)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full spool disk is this service's capacity problem, not the caller's.
            raise Overloaded(
                "the preprocess service has no room to store the upload right now; retry shortly",
                retry_after_s=10.0,
            ) from exc
        if total == 0:
            raise InvalidAudio("the file is empty")
        return path, total, bytes(head)

    def _probe(self, path: Path, size: int, head: bytes, cancel: CancelToken) -> ProbeResult:
        with _tracer.start_as_current_span("preprocess.probe") as span:
            probe = self._probe_checked(path, size, head, cancel)
            report = probe.report
            span.set_attributes(
                {
                    "asr.media.container": report.container,
                    "asr.media.codec": report.codec,
                    "asr.media.sample_rate_hz": report.sample_rate_hz,
                    "asr.media.channels": report.channels,
                    "asr.audio.declared_duration_s": report.duration,
                    "asr.audio.duration_estimated": probe.duration_estimated,
                }
            )
            return probe

    def _probe_checked(
        self, path: Path, size: int, head: bytes, cancel: CancelToken
    ) -> ProbeResult:
        limits = self.config.limits
        child = ffmpeg.Child(
            ffmpeg.probe_args(self.config.ffprobe_path, path),
            self._child_limits,
            limits.probe_timeout_seconds,
            cancel,
            what="analysing the file",
            tool="probe",
            deadline_setting="probe_timeout_seconds",
        )
        out = child.run()
        if child.out_of_memory():
            raise LimitExceeded(
                f"analysing the file needed more than the memory limit of "
                f"{_size(limits.child_memory_bytes)} (child_memory_bytes)",
                metadata={"limit": "child_memory_bytes", "value": str(limits.child_memory_bytes)},
            )
        parsed = _probe_json(out)
        if child.returncode != 0 or not parsed:
            raise InvalidAudio(ffmpeg.explain_probe_failure(child.stderr.lines, path))
        probe = ffmpeg.parse_probe(out.decode("utf-8", "replace"), size, child.stderr.lines)
        check_sample_rate(probe.report.sample_rate_hz, probe.report.codec)
        check_wav_header(head, size, limits)
        check_declared_duration(
            probe.report.duration, limits, slack=ESTIMATE_SLACK if probe.duration_estimated else 1.0
        )
        return probe

    def _decode(
        self,
        path: Path,
        probe: ProbeResult,
        options: PreprocessOptions,
        size: int,
        cancel: CancelToken,
        started: float,
    ) -> Iterator[bytes | DecodeSummary]:
        """`_decode_stream` inside a "preprocess.decode" span.

        Resampling (soxr) and loudness normalisation run in the same ffmpeg child as the
        decoder, so they cannot be timed apart: the span carries them as attributes. The span
        is not made current, since a generator's context would leak across its yields.
        """
        report = probe.report
        chain = ffmpeg.filter_chain(
            report.sample_rate_hz, options.loudness_normalization, self.config.loudnorm_target_lufs
        )
        span = _tracer.start_span(
            "preprocess.decode",
            attributes={
                "asr.media.container": report.container,
                "asr.media.codec": report.codec,
                "asr.preprocess.source_rate_hz": report.sample_rate_hz,
                "asr.preprocess.resampler": "soxr" if "soxr" in chain else "none",
                "asr.preprocess.filters": chain,
                "asr.preprocess.loudness_normalization": options.loudness_normalization,
                "asr.preprocess.trim_silence": options.trim_silence,
            },
        )
        begun = time.monotonic()
        try:
            for event in self._decode_stream(path, probe, options, size, cancel, started):
                if isinstance(event, DecodeSummary):
                    seconds = time.monotonic() - begun
                    span.set_attributes(
                        {
                            "asr.audio.duration_s": event.decoded_duration,
                            "asr.audio.output_duration_s": event.audio_duration,
                            "asr.preprocess.decode_s": seconds,
                            "asr.rtf": (
                                seconds / event.decoded_duration if event.decoded_duration else 0.0
                            ),
                        }
                    )
                yield event
        except GeneratorExit:
            span.set_attribute("asr.cancelled", True)
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)[:200]))
            raise
        finally:
            span.end()

    def _decode_stream(
        self,
        path: Path,
        probe: ProbeResult,
        options: PreprocessOptions,
        size: int,
        cancel: CancelToken,
        started: float,
    ) -> Iterator[bytes | DecodeSummary]:
        cfg, limits = self.config, self.config.limits
        argv = ffmpeg.decode_args(
            cfg.ffmpeg_path,
            path,
            probe,
            loudness_normalization=options.loudness_normalization,
            loudnorm_target=cfg.loudnorm_target_lufs,
        )
        child = ffmpeg.Child(
            argv,
            self._child_limits,
            limits.max_decode_seconds,
            cancel,
            what="decoding the file",
            tool="decoder",
            deadline_setting="max_decode_seconds",
        )
        declared = probe.report.duration if not probe.duration_estimated else 0.0
        claimed = probe.report.duration  # estimated or not: the bomb check only needs a scale
        cap = DurationCap(
            round(declared * SAMPLE_RATE) * BYTES_PER_SAMPLE,
            int(PADDING_TOLERANCE_S * SAMPLE_RATE) * BYTES_PER_SAMPLE,
        )
        trimmer = (
            SilenceTrimmer(
                cfg.silence_threshold_db, int(cfg.silence_padding_seconds * BYTES_PER_SECOND)
            )
            if options.trim_silence
            else None
        )
        chunker = Chunker(size)
        decoded, sent, odd = 0, 0, b""
        with contextlib.closing(child.stream()) as stream:
            for data in stream:
                decoded += len(data)
                check_decoded_so_far(decoded, limits)
                check_overrun(decoded / BYTES_PER_SECOND, claimed)
                data, odd = odd + data, b""
                if len(data) % BYTES_PER_SAMPLE:  # a pipe read may end mid-sample
                    data, odd = data[:-1], data[-1:]
                data = cap.feed(data)
                if trimmer is not None:
                    data = trimmer.feed(data)
                for chunk in chunker.feed(data):
                    sent += len(chunk)
                    yield chunk
        self._check_exit(child, path, decoded / BYTES_PER_SECOND, probe)
        tail = cap.finish()
        if trimmer is not None:
            tail = trimmer.feed(tail) + trimmer.finish() if tail else trimmer.finish()
        for chunk in [*chunker.feed(tail), *chunker.finish()]:
            sent += len(chunk)
            yield chunk
        yield DecodeSummary(
            audio_duration=sent / BYTES_PER_SECOND,
            pcm_bytes=sent,
            decode_seconds=time.monotonic() - started,
            decoded_duration=decoded / BYTES_PER_SECOND,
        )

    def _check_exit(
        self, child: ffmpeg.Child, path: Path, decoded_seconds: float, probe: ProbeResult
    ) -> None:
        limits = self.config.limits
        first_error = ffmpeg.clean_line(child.stderr.lines[0], path) if child.stderr.lines else ""
        if child.out_of_memory():
            raise LimitExceeded(
                f"decoding the file needed more than the memory limit of "
                f"{_size(limits.child_memory_bytes)} (child_memory_bytes)",
                metadata={"limit": "child_memory_bytes", "value": str(limits.child_memory_bytes)},
            )
        if child.returncode != 0:
            last = ffmpeg.clean_line(child.stderr.lines[-1], path) if child.stderr.lines else ""
            raise InvalidAudio(
                "the file is truncated or corrupt: the decoder failed"
                + (f" ({last})" if last else f" (exit status {child.returncode})")
            )
        check_complete(decoded_seconds, probe, child.stderr.count, first_error)


def _probe_json(out: bytes) -> bool:
    """True when ffprobe printed a JSON object with a format section (it prints {} on failure)."""
    return b'"format"' in out
