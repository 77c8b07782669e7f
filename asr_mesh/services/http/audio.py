"""Browser audio for the WebSocket: re-chunk raw PCM, decode WebM/Ogg Opus with ffmpeg on the fly.

`PcmChunker` cuts whatever the browser sends into the 20-500 ms pieces StreamingTranscribe takes.
`StreamDecoder` runs one ffmpeg child per session reading the MediaRecorder stream from its stdin
and writing 16 kHz mono s16le to its stdout (probing kept tiny so the first words are not held
back by ffmpeg's 5 MB default probe).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 2
MIN_CHUNK_BYTES = BYTES_PER_SECOND // 50  # 20 ms
MAX_CHUNK_BYTES = BYTES_PER_SECOND // 2  # 500 ms
CONTAINERS = {"webm": "matroska", "ogg": "ogg"}
"""Encodings (as the page names them) decoded by ffmpeg, with the ffmpeg demuxer for each."""


class PcmChunker:
    """Collects s16le bytes; `push` returns the whole 20-500 ms pieces ready to send."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.total_bytes = 0

    def push(self, data: bytes) -> list[bytes]:
        self._buffer += data
        self.total_bytes += len(data)
        pieces = []
        while len(self._buffer) >= MIN_CHUNK_BYTES:
            size = min(len(self._buffer), MAX_CHUNK_BYTES)
            size -= size % 2
            pieces.append(bytes(self._buffer[:size]))
            del self._buffer[:size]
        return pieces

    def flush(self) -> list[bytes]:
        """What is left (an odd trailing byte is dropped: half a sample)."""
        size = len(self._buffer) - len(self._buffer) % 2
        rest, self._buffer = bytes(self._buffer[:size]), bytearray()
        return [rest] if rest else []

    @property
    def seconds(self) -> float:
        return self.total_bytes / BYTES_PER_SECOND


class StreamDecoder:
    """ffmpeg decoding a compressed stream as it arrives: `feed(bytes)`, then `close()`.

    Decoded PCM goes to `on_pcm(bytes)` from a reader thread; `on_end(error)` is called once when
    ffmpeg has finished (error: its last stderr line when it failed, else "").
    """

    def __init__(
        self,
        encoding: str,
        on_pcm: Callable[[bytes], None],
        on_end: Callable[[str], None],
        ffmpeg: str = "ffmpeg",
    ):
        if encoding not in CONTAINERS:
            raise ValueError(f"unknown encoding {encoding!r}")
        self._on_pcm, self._on_end = on_pcm, on_end
        self._process = subprocess.Popen(
            [
                ffmpeg,
                "-hide_banner",
                "-loglevel",
                "error",
                "-probesize",
                "4096",
                "-analyzeduration",
                "0",
                "-fflags",
                "nobuffer",
                "-f",
                CONTAINERS[encoding],
                "-i",
                "pipe:0",
                "-vn",
                "-ac",
                "1",
                "-ar",
                str(SAMPLE_RATE),
                "-f",
                "s16le",
                "-flush_packets",
                "1",
                "pipe:1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        stdin, stdout, stderr = self._process.stdin, self._process.stdout, self._process.stderr
        assert stdin is not None and stdout is not None and stderr is not None  # all three PIPE
        self._stdin, self._stdout, self._errout = stdin, stdout, stderr
        self._stderr: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True, name="ffmpeg-out")
        self._reader.start()
        threading.Thread(target=self._drain_stderr, daemon=True, name="ffmpeg-err").start()

    def feed(self, data: bytes) -> bool:
        """Write compressed bytes; False when ffmpeg no longer takes input (it failed)."""
        try:
            self._stdin.write(data)
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False

    def close(self) -> None:
        """End of input: ffmpeg flushes what it holds and exits (on_end follows)."""
        try:
            self._stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self.close()

    def wait(self, timeout: float | None = None) -> None:
        self._reader.join(timeout)

    def _drain_stderr(self) -> None:
        for line in self._errout:
            self._stderr = (self._stderr + [line])[-5:]

    def _read(self) -> None:
        out = self._stdout
        while piece := out.read(MAX_CHUNK_BYTES // 4):
            self._on_pcm(piece)
        code = self._process.wait()
        error = ""
        if code != 0:
            last = b"".join(self._stderr).decode(errors="replace").strip().splitlines()
            error = last[-1] if last else f"ffmpeg exited with code {code}"
        self._on_end(error)
