"""PCM helpers: the mesh's one audio format (16 kHz mono s16le) and how it travels."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE
from services.common.errors import InvalidAudio, InvalidInput

DEFAULT_CHUNK_BYTES = 256 * 1024
"""PCM chunk size on the wire: 8 s of audio, well under gRPC's 4 MiB message limit."""


def check_format(sample_rate_hz: int, channels: int, encoding: int) -> None:
    """Refuse PCM that is not the mesh's format (zero values mean the default)."""
    if sample_rate_hz not in (0, SAMPLE_RATE):
        raise InvalidInput(
            f"PCM must be {SAMPLE_RATE} Hz, got {sample_rate_hz} Hz; send audio through the "
            "preprocess service first",
            field="config.format.sample_rate_hz",
        )
    if channels not in (0, 1):
        raise InvalidInput(f"PCM must be mono, got {channels} channels", field="config.format.channels")
    if encoding not in (0, 1):  # UNSPECIFIED or S16LE
        raise InvalidInput("PCM must be signed 16-bit little-endian", field="config.format.encoding")


def pcm_duration(num_bytes: int) -> float:
    return num_bytes / (SAMPLE_RATE * BYTES_PER_SAMPLE)


def pcm_to_float32(pcm: bytes | bytearray | memoryview) -> np.ndarray:
    """s16le bytes → float32 in [-1, 1), exactly as faster-whisper's `decode_audio` scales."""
    if len(pcm) % BYTES_PER_SAMPLE:
        raise InvalidAudio("PCM stream ends in the middle of a sample (odd byte count)")
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    audio /= 32768.0  # in place: one float copy of an hour is 230 MB, two would be 460 MB
    return audio


def chunked(data: bytes | memoryview, size: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Split bytes into wire-sized pieces (sizes stay multiples of a sample)."""
    size -= size % BYTES_PER_SAMPLE
    view = memoryview(data)
    for offset in range(0, len(view), size):
        yield bytes(view[offset : offset + size])


def collect(chunks: Iterable[bytes]) -> bytes:
    return b"".join(chunks)
