"""PCM helpers: the mesh's one audio format (16 kHz mono s16le) and how it travels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from asr_mesh.services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE
from asr_mesh.services.common.domain_errors import InvalidAudio, InvalidInput, LimitExceeded
from asr_mesh.services.common.streams import UploadMeter

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
        raise InvalidInput(
            f"PCM must be mono, got {channels} channels", field="config.format.channels"
        )
    if encoding not in (0, 1):  # UNSPECIFIED or S16LE
        raise InvalidInput(
            "PCM must be signed 16-bit little-endian", field="config.format.encoding"
        )


def pcm_duration(num_bytes: int) -> float:
    return num_bytes / (SAMPLE_RATE * BYTES_PER_SAMPLE)


def pcm_samples(pcm: bytes | bytearray | memoryview) -> np.ndarray:
    """s16le bytes → int16 samples without a copy; refuses a stream cut inside a sample."""
    if len(pcm) % BYTES_PER_SAMPLE:
        raise InvalidAudio("PCM stream ends in the middle of a sample (odd byte count)")
    return np.frombuffer(pcm, dtype="<i2")


def pcm_to_float32(pcm: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """s16le bytes (or int16 samples) → float32 in [-1, 1), as faster-whisper's `decode_audio`
    scales."""
    samples = pcm if isinstance(pcm, np.ndarray) else pcm_samples(pcm)
    if samples.dtype != np.int16:
        raise TypeError(f"expected int16 PCM samples, got {samples.dtype}")
    audio = samples.astype(np.float32)
    audio /= 32768.0  # in place: one float copy of an hour is 230 MB, two would be 460 MB
    return audio


def read_config(request_iterator: Iterator[Any], *, config_field: str = "config") -> Any:
    """The config message that must open a request stream, its PCM format checked.

    Reads exactly one message, so a servicer can decide on admission (queue slot, limits)
    before any audio is read.
    """
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("payload") != config_field:
        raise InvalidInput(
            f"the first message of the stream must carry {config_field}, before any audio",
            field=config_field,
        )
    config = getattr(first, config_field)
    fmt = config.format
    check_format(fmt.sample_rate_hz, fmt.channels, fmt.encoding)
    return config


def read_pcm(
    request_iterator: Iterator[Any],
    *,
    max_audio_seconds: float,
    meter: UploadMeter,
    config_field: str = "config",
) -> bytearray:
    """The PCM of the audio messages that follow the config, refused beyond `max_audio_seconds`.

    `meter` checks the stream against the size declared in the config and tells a cancelled
    stream from a finished one (see `asr_mesh.services.common.streams`). A bytearray, not bytes:
    converting would hold an hour of audio twice for a moment.
    """
    pcm = bytearray()
    for piece in pcm_pieces(
        request_iterator,
        max_audio_seconds=max_audio_seconds,
        meter=meter,
        config_field=config_field,
    ):
        pcm += piece
    return pcm


def pcm_pieces(
    request_iterator: Iterator[Any],
    *,
    max_audio_seconds: float,
    meter: UploadMeter,
    config_field: str = "config",
) -> Iterator[bytes]:
    """The PCM of each audio message after the config, as it arrives, with `read_pcm`'s checks:
    for services that work on the audio while it streams in instead of holding all of it."""
    limit = int(max_audio_seconds * SAMPLE_RATE * BYTES_PER_SAMPLE)
    for request in request_iterator:
        if request.WhichOneof("payload") != "audio":
            raise InvalidInput(
                f"{config_field} may appear only once, as the first message of the stream",
                field=config_field,
            )
        meter.add(len(request.audio.pcm))
        if meter.received > limit:
            raise LimitExceeded(
                f"audio is longer than this service's limit of {max_audio_seconds:.0f} s",
                metadata={"limit_seconds": str(max_audio_seconds)},
            )
        yield request.audio.pcm
    meter.finish()


def chunked(data: bytes | memoryview, size: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Split bytes into wire-sized pieces (sizes stay multiples of a sample)."""
    size -= size % BYTES_PER_SAMPLE
    view = memoryview(data)
    for offset in range(0, len(view), size):
        yield bytes(view[offset : offset + size])
