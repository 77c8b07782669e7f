"""ffmpeg and ffprobe as sandboxed child processes. Pure: no gRPC, no environment reads.

The decoder runs in a child process so a crashing or hanging ffmpeg cannot take the service
down. Each child gets resource limits (address space, CPU seconds, no file writes, no core
dumps; see `sandboxed`), a fixed environment, a wall-clock deadline, and is killed on
cancellation. Both tools may only open the
spooled upload: `-protocol_whitelist file` keeps them off the network and a demuxer whitelist
keeps out playlists and scripts (HLS, concat, DASH, ...) that would make them open other files.
"""

from __future__ import annotations

import errno
import json
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asr_mesh.services.common.domain import MediaReport
from asr_mesh.services.common.domain_errors import Cancelled, InvalidAudio, LimitExceeded

ALLOWED_DEMUXERS: tuple[str, ...] = (
    # Plain audio files.
    "wav",
    "w64",
    "mp3",
    "flac",
    "ogg",
    "aac",
    "aiff",
    "caf",
    "amr",
    "au",
    "wv",
    "ape",
    "tta",
    # Audio/video containers whose audio the mesh takes (mp4/m4a/mov, mkv/webm, wma/asf, ...).
    "mov",
    "matroska",
    "asf",
    "avi",
    "flv",
    "mpegts",
)
"""Demuxers ffmpeg/ffprobe may use. Matching is per name in ffmpeg's comma lists, so "mov"
admits "mov,mp4,m4a,3gp,3g2,mj2" and "matroska" admits "matroska,webm". Deliberately absent:
anything that follows references to other files or URLs (hls, concat, dash, image2, sdp, rtsp,
webm_dash_manifest, ffmetadata) and text formats (tty, bin, sbg). The mov demuxer's external
data references stay off (its `enable_drefs` option defaults to false)."""

ALLOWED_PROTOCOLS = "file"

PROBE_ENTRIES = (
    "format=format_name,duration,bit_rate,size"
    ":stream=index,codec_type,codec_name,sample_rate,channels,duration,bit_rate"
)
"""Only the fields the service reads: keeps tags (arbitrary size) out of the probe output."""

_MAX_STDERR_LINES = 200
_MAX_PROBE_OUTPUT = 1 << 20
_COMPONENT = re.compile(r"^\[([^\]@]+?) @ 0x[0-9a-f]+\]\s*")
_REPEATED = re.compile(r"Last message repeated (\d+) times")


@dataclass(frozen=True)
class ChildLimits:
    """Resource limits applied to each ffmpeg/ffprobe child process."""

    memory_bytes: int = 1 << 30
    cpu_seconds: int = 900


class CancelToken:
    """Set by the servicer when the caller goes away; kills whatever child is running."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()

    @property
    def event(self) -> threading.Event:
        """Set once `cancel` has been called (for waits that should end on a cancel)."""
        return self._event

    @property
    def cancelled(self) -> bool:
        """True once `cancel` has been called."""
        return self._event.is_set()

    def cancel(self) -> None:
        """Mark the job cancelled and kill its running children (safe from any thread)."""
        self._event.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _kill(proc)

    def _register(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
        if self.cancelled:  # cancelled between the check and the spawn
            _kill(proc)

    def _unregister(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)


@dataclass(frozen=True)
class ProbeResult:
    """What ffprobe found, plus what the decoder needs to pick the same stream and demuxer."""

    report: MediaReport
    stream_index: int
    demuxer: str
    """First name of ffprobe's format_name, passed to ffmpeg with -f."""
    duration_estimated: bool = False
    """True when ffprobe guessed the duration from the bit rate (it may be far off)."""


@dataclass
class StderrLog:
    """What a child printed on stderr: a bounded list of lines and a count of all of them."""

    lines: list[str] = field(default_factory=list)
    count: int = 0
    _partial: bytes = b""

    def feed(self, data: bytes) -> None:
        """Add raw stderr bytes (lines may be split across reads)."""
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            self._add(raw)

    def close(self) -> None:
        """Count the last line if it had no newline."""
        if self._partial:
            self._add(self._partial)
            self._partial = b""

    def _add(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            return
        repeated = _REPEATED.search(line)
        self.count += int(repeated.group(1)) if repeated else 1
        if len(self.lines) < _MAX_STDERR_LINES and not repeated:
            self.lines.append(line)


# --------------------------------------------------------------------------- argument lists


def input_args(path: Path, demuxer: str = "") -> list[str]:
    """The options that confine a tool to the one spooled file, then the input itself."""
    args = [
        "-protocol_whitelist",
        ALLOWED_PROTOCOLS,
        "-format_whitelist",
        ",".join(ALLOWED_DEMUXERS),
    ]
    if demuxer:
        args += ["-f", demuxer]
    # "file:" so a name is never taken for another protocol or an option.
    return [*args, "-i", f"file:{path}"]


def probe_args(ffprobe: str, path: Path) -> list[str]:
    """ffprobe command line printing the JSON this module parses."""
    return [
        ffprobe,
        "-hide_banner",
        "-v",
        "warning",
        "-print_format",
        "json",
        "-show_entries",
        PROBE_ENTRIES,
        *input_args(path),
    ]


def filter_chain(source_rate: int, loudness_normalization: bool, loudnorm_target: float) -> str:
    """The -af graph, or "" when ffmpeg's plain conversion suffices.

    Input already at 16 kHz gets no filter at all, so its PCM is byte-identical to what
    faster-whisper's `decode_audio` (PyAV, libswresample) produces. Other rates go through the
    SoX resampler, which has a flatter passband and less aliasing than swr's default.
    """
    filters: list[str] = []
    if loudness_normalization:
        # Single-pass EBU R128; loudnorm works at 192 kHz internally, hence the resample after.
        filters.append(f"loudnorm=I={loudnorm_target:g}:TP=-2:LRA=11")
    if loudness_normalization or source_rate != 16_000:
        filters.append("aresample=16000:resampler=soxr:precision=28")
    return ",".join(filters)


def decode_args(
    ffmpeg: str,
    path: Path,
    probe: ProbeResult,
    *,
    loudness_normalization: bool = False,
    loudnorm_target: float = -23.0,
) -> list[str]:
    """ffmpeg command line writing 16 kHz mono s16le of the probed stream to stdout."""
    args = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-v",
        "error",
        # One decoder thread: audio decoding gains little from more and the host is shared.
        "-threads",
        "1",
        *input_args(path, probe.demuxer),
        "-map",
        f"0:{probe.stream_index}",
        "-vn",
        "-sn",
        "-dn",
    ]
    chain = filter_chain(probe.report.sample_rate_hz, loudness_normalization, loudnorm_target)
    if chain:
        args += ["-af", chain]
    return [*args, "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1"]


# --------------------------------------------------------------------------- probe parsing


def _num(value: object, kind: type = float, default: float | int = 0) -> float | int:
    try:
        return kind(float(value)) if kind is int else kind(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def parse_probe(output: str, size_bytes: int, warnings: Sequence[str] = ()) -> ProbeResult:
    """Turn ffprobe's JSON into a ProbeResult; refuse files without a usable audio stream."""
    try:
        data = json.loads(output or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidAudio(
            f"the file could not be analysed (unreadable probe output: {exc.msg})"
        ) from exc
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    if not fmt.get("format_name"):
        raise InvalidAudio("the file is not in a recognised audio or video format")
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    has_video = any(s.get("codec_type") == "video" for s in streams)
    if not audio:
        what = "it holds only video" if has_video else "it holds no streams ffmpeg can use"
        raise InvalidAudio(f"no audio stream found in the file ({what})")
    stream = audio[0]
    codec = stream.get("codec_name") or ""
    sample_rate = int(_num(stream.get("sample_rate"), int))
    channels = int(_num(stream.get("channels"), int))
    if not codec or codec == "none":
        raise InvalidAudio("the file's audio is in a codec this service cannot decode")
    if sample_rate <= 0 or channels <= 0:
        raise InvalidAudio(
            f"the file's audio stream ({codec}) declares no sample rate or channel count; "
            "the file is truncated or corrupt"
        )
    # The audio stream's own duration; the container's may include a longer video track.
    duration = float(_num(stream.get("duration"))) or float(_num(fmt.get("duration")))
    bit_rate = int(_num(stream.get("bit_rate"), int)) or int(_num(fmt.get("bit_rate"), int))
    report = MediaReport(
        container=fmt["format_name"],
        codec=codec,
        sample_rate_hz=sample_rate,
        channels=channels,
        duration=max(duration, 0.0),
        bit_rate=max(bit_rate, 0),
        size_bytes=size_bytes,
        has_video=has_video,
    )
    estimated = any("Estimating duration from bitrate" in w for w in warnings)
    return ProbeResult(
        report=report,
        stream_index=int(_num(stream.get("index"), int)),
        demuxer=fmt["format_name"].split(",")[0],
        duration_estimated=estimated,
    )


def clean_line(line: str, path: Path) -> str:
    """An ffmpeg message fit for a caller: no temp path, no pointer, component kept as a prefix."""
    match = _COMPONENT.match(line)
    text = line[match.end() :] if match else line
    text = text.replace(f"file:{path}", "input").replace(str(path), "input").strip()
    if text.startswith("input: "):
        text = text[len("input: ") :]
    component = match.group(1).split(",")[0] if match else ""
    return f"{component}: {text}" if component else text


_REFUSED_KINDS = {
    "hls": "an HLS playlist",
    "concat": "an ffmpeg concat list",
    "dash": "a DASH manifest",
    "webm_dash_manifest": "a WebM DASH manifest",
    "image2": "an image sequence",
    "tty": "a text file",
    "sdp": "an SDP session description",
}


_TRUNCATION_HINTS = (
    "do not match",
    "moov atom not found",
    "no 'data' tag",
    "Invalid frame size",
    "truncat",
    "End of file",
    "partial file",
)


def explain_probe_failure(lines: list[str], path: Path) -> str:
    """A human sentence for an ffprobe that found no usable media."""
    joined = "\n".join(lines)
    refused = re.search(r"\[([^\]@]+?) @ 0x[0-9a-f]+\]\s*Format not on whitelist", joined)
    if refused:
        name = refused.group(1).split(",")[0]
        kind = _REFUSED_KINDS.get(name, f"a {name!r} file")
        return (
            f"the file is {kind}, which this service refuses: only plain audio and video files "
            "are read, never playlists or lists that refer to other files"
        )
    guessed = re.search(r"Format (\S+) detected only with low score", joined)
    details = [clean_line(x, path) for x in lines if _COMPONENT.match(x) and "low score" not in x]
    truncation = [d for d in details if any(h in d for h in _TRUNCATION_HINTS)]
    if truncation:
        return f"the file is truncated or corrupt: {truncation[-1]}"[:400]
    if guessed:
        return (
            f"the file is not a recognised audio or video format (it only faintly resembles "
            f"{guessed.group(1)} and cannot be read as such)"
        )
    if details:
        return f"the file is truncated or corrupt: {details[-1]}"[:400]
    if "Invalid data found when processing input" in joined:
        return "the file is not in a recognised audio or video format"
    last = clean_line(lines[-1], path) if lines else "unknown error"
    return f"the file could not be read as audio: {last}"[:400]


# --------------------------------------------------------------------------- WAV header check


def wav_declared_data(head: bytes) -> tuple[int, int, int] | None:
    """(data offset, declared data bytes, byte rate) from a RIFF/WAVE header, or None.

    ffprobe silently estimates a WAV's length from the file size when the header claims more,
    so a truncated upload or a header claiming hours would go unnoticed; this reads the claim.
    Streaming placeholders (0 and 0xFFFFFFFF) return None.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        tag, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if tag == b"fmt " and pos + 20 <= len(head):
            byte_rate = int.from_bytes(head[pos + 16 : pos + 20], "little")
        if tag == b"data":
            if size in (0, 0xFFFFFFFF) or byte_rate <= 0:
                return None
            return pos + 8, size, byte_rate
        pos += 8 + size + (size & 1)
    return None


# --------------------------------------------------------------------------- child processes


def sandboxed(argv: list[str], limits: ChildLimits) -> list[str]:
    """argv run under a /bin/sh that sets the resource limits and then execs the tool.

    Not `preexec_fn` + `resource.setrlimit`: a preexec_fn makes CPython run the at-fork hooks
    of every loaded extension in the child, and gRPC's crash the child (seen: ffprobe "dying"
    of SIGSEGV before exec inside a gRPC server). The shell's `ulimit` builtins are the same
    setrlimit calls, made after a plain fork/exec. Limits are integers; the tool and its
    arguments pass as positional parameters, never through the script text.
    """
    memory_kib, cpu = int(limits.memory_bytes) // 1024, int(limits.cpu_seconds)
    script = (
        f"ulimit -v {memory_kib} && ulimit -t {cpu} "
        # No file writes (stdout is a pipe, which the limit does not cover) and no core dumps.
        '&& ulimit -f 0 && ulimit -c 0 && exec "$@"'
    )
    return ["/bin/sh", "-c", script, "sandbox", *argv]


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
    except OSError:
        pass


_CHILD_ENV = {"LC_ALL": "C", "MALLOC_ARENA_MAX": "2"}
"""Fixed environment for children: nothing from the service's own (proxies, credentials...)."""


class Child:
    """One sandboxed ffmpeg/ffprobe run: stream stdout, keep stderr, enforce a deadline."""

    def __init__(
        self,
        argv: list[str],
        limits: ChildLimits,
        deadline_s: float,
        cancel: CancelToken,
        *,
        what: str,
        tool: str,
        deadline_setting: str,
    ):
        self.argv = argv
        self.what = what  # "decoding": names the activity in messages
        self.tool = tool  # "decoder": names the process in messages
        self.deadline_setting = deadline_setting
        self.deadline_s = deadline_s
        self.stderr = StderrLog()
        self.returncode: int | None = None
        self._limits = limits
        self._cancel = cancel

    def stream(self, read_size: int = 1 << 16) -> Generator[bytes, None, None]:
        """Yield stdout as it comes; return when the child has exited (returncode set)."""
        if self._cancel.cancelled:
            raise Cancelled("the caller cancelled the request")
        try:
            proc = subprocess.Popen(
                sandboxed(self.argv, self._limits),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_CHILD_ENV,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeError(f"cannot start {self.argv[0]}: {exc}") from exc
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None  # both PIPE
        self._cancel._register(proc)
        started = time.monotonic()
        sel = selectors.DefaultSelector()
        try:
            sel.register(stdout, selectors.EVENT_READ, "out")
            sel.register(stderr, selectors.EVENT_READ, "err")
            open_fds = 2
            while open_fds:
                left = self.deadline_s - (time.monotonic() - started)
                if left <= 0:
                    _kill(proc)
                    raise LimitExceeded(
                        f"{self.what} took longer than the limit of {self.deadline_s:g} s "
                        f"({self.deadline_setting})",
                        metadata={"limit": self.deadline_setting, "value": f"{self.deadline_s:g}"},
                    )
                for key, _ in sel.select(timeout=min(left, 0.5)):
                    data = os.read(key.fd, read_size)
                    if not data:
                        sel.unregister(key.fileobj)
                        open_fds -= 1
                    elif key.data == "out":
                        yield data
                    else:
                        self.stderr.feed(data)
                if self._cancel.cancelled:
                    raise Cancelled("the caller cancelled the request")
            left = max(self.deadline_s - (time.monotonic() - started), 0.1)
            try:
                self.returncode = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                raise LimitExceeded(
                    f"{self.what} took longer than the limit of {self.deadline_s:g} s "
                    f"({self.deadline_setting})",
                    metadata={"limit": self.deadline_setting, "value": f"{self.deadline_s:g}"},
                ) from None
            self.stderr.close()
            if self._cancel.cancelled:
                raise Cancelled("the caller cancelled the request")
            self._check_signal()
        finally:
            sel.close()
            if proc.poll() is None:
                _kill(proc)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for pipe in (stdout, stderr):
                try:
                    pipe.close()
                except OSError as exc:
                    if exc.errno != errno.EBADF:
                        raise
            self._cancel._unregister(proc)

    def run(self, max_output: int = _MAX_PROBE_OUTPUT) -> bytes:
        """Run to completion and return stdout (bounded)."""
        out = bytearray()
        for data in self.stream():
            out += data
            if len(out) > max_output:
                raise InvalidAudio(f"the file could not be analysed ({self.what} printed too much)")
        return bytes(out)

    def _check_signal(self) -> None:
        rc = self.returncode or 0
        if rc >= 0:
            return
        sig = -rc
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            raise LimitExceeded(
                f"{self.what} used more than the CPU time limit of {self._limits.cpu_seconds} s",
                metadata={"limit": "cpu_seconds", "value": str(self._limits.cpu_seconds)},
            )
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        raise InvalidAudio(
            f"the file is truncated or corrupt: the {self.tool} crashed reading it ({name})"
        )

    def out_of_memory(self) -> bool:
        """True when the child said an allocation failed (its address-space limit)."""
        return any("Cannot allocate memory" in line for line in self.stderr.lines)
