"""Decoded PCM as the chain's branches read it: whole, or still being decoded.

Preprocessing writes 16 kHz mono s16le PCM into the request's spool directory; with
`GrowingPcm` transcription and diarization start reading it at once, instead of waiting for the
last sample: each reader blocks until the bytes it wants exist or the writer has finished.
`StaticPcm` gives the same interface over bytes already in memory (tests, the HTTP streaming
path). Pure: no gRPC.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from asr_mesh.services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE
from asr_mesh.services.common.domain_errors import Cancelled

CHUNK_BYTES = 64 * 1024


class PcmSource(Protocol):
    """What a branch of the chain reads."""

    @property
    def complete(self) -> bool:
        """Whether every byte is there (`size` is final)."""

    @property
    def size(self) -> int:
        """Bytes available now."""

    @property
    def duration_hint(self) -> float:
        """Seconds of audio: exact once complete, the container's announced duration before."""

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Every byte from the start, in pieces of at most `size` (whole samples), as they come."""

    def read(self, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi), waiting for them; fewer only when the audio ends before `hi`."""


class StaticPcm:
    """A `PcmSource` over PCM already complete (bytes or a mapped file)."""

    def __init__(self, data: bytes | memoryview):
        self._data = memoryview(data)

    complete = True

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def duration_hint(self) -> float:
        return len(self._data) / (SAMPLE_RATE * BYTES_PER_SAMPLE)

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        size -= size % BYTES_PER_SAMPLE
        for offset in range(0, len(self._data), size):
            yield bytes(self._data[offset : offset + size])

    def read(self, lo: int, hi: int) -> bytes:
        return bytes(self._data[lo:hi])


def as_source(pcm: bytes | memoryview | PcmSource) -> PcmSource:
    return StaticPcm(pcm) if isinstance(pcm, bytes | bytearray | memoryview) else pcm


class GrowingPcm:
    """PCM one thread writes to a file while others read it (`PcmSource`).

    The writer calls `announce` (duration from the container, when known), `write` and then
    `finish`, or `fail` with the reason; readers block until their bytes are written. A reader of
    a failed source gets `Cancelled` (the chain reports the writer's own error).
    """

    def __init__(self, path: Path):
        self.path = path
        self._sink = open(path, "wb")  # noqa: SIM115 - closed by finish() or fail()
        self._fd = os.open(path, os.O_RDONLY)
        self._size = 0
        self._expected = 0.0
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self.started = threading.Event()
        """Set once the duration is announced or the first bytes are written."""

    # -- writer ---------------------------------------------------------------------------

    def announce(self, duration: float) -> None:
        with self._changed:
            self._expected = max(duration, 0.0)
        if duration > 0:
            self.started.set()

    def write(self, data: bytes) -> None:
        self._sink.write(data)
        self._sink.flush()  # readers read the file, not this buffer
        with self._changed:
            self._size += len(data)
            self._changed.notify_all()
        self.started.set()

    def finish(self) -> None:
        self._sink.close()
        with self._changed:
            self._done = True
            self._changed.notify_all()
        self.started.set()

    def fail(self, error: BaseException) -> None:
        if not self._sink.closed:
            self._sink.close()
        with self._changed:
            self._error = error
            self._changed.notify_all()
        self.started.set()

    def close(self) -> None:
        """Release the read descriptor (the file itself belongs to the request's spool)."""
        try:
            os.close(self._fd)
        except OSError:
            pass

    # -- readers --------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def size(self) -> int:
        return self._size

    @property
    def duration_hint(self) -> float:
        if self._done:
            return self._size / (SAMPLE_RATE * BYTES_PER_SAMPLE)
        return max(self._expected, self._size / (SAMPLE_RATE * BYTES_PER_SAMPLE))

    def _wait_for(self, offset: int) -> int:
        """Bytes available once more than `offset` exist or the writing ended."""
        with self._changed:
            while self._size <= offset and not self._done and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise Cancelled(f"the audio could not be decoded: {self._error}")
            return self._size

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        size -= size % BYTES_PER_SAMPLE
        offset = 0
        while True:
            available = self._wait_for(offset)
            if available <= offset:
                return  # finished, all read
            take = min(available - offset, size)
            if not self._done:
                take -= take % BYTES_PER_SAMPLE  # a sample split across writes waits for its half
                if take == 0:
                    self._wait_for(offset + 1)
                    continue
            yield os.pread(self._fd, take, offset)
            offset += take

    def read(self, lo: int, hi: int) -> bytes:
        while True:
            available = self._wait_for(hi - 1)
            if available >= hi or self._done:
                return os.pread(self._fd, max(min(hi, available) - lo, 0), lo)

    def wait_until_started(self) -> None:
        """Wait until readers may begin: the duration is known, or else all of the audio.

        Deadlines and the fan-out decision need the duration; a container that does not
        announce one makes the branches wait for the whole file, as without pipelining."""
        self.started.wait()
        with self._changed:
            while self._expected <= 0 and not self._done and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise Cancelled(f"the audio could not be decoded: {self._error}")

    def mapped(self) -> memoryview | bytes:
        """The finished file, memory-mapped (page cache, not heap); empty gives b""."""
        if not self._done:
            raise RuntimeError("the PCM is still being written")
        if self._size == 0:
            return b""
        return memoryview(mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ))
