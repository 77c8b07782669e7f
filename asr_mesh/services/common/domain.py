"""Domain types shared by the pure cores.

Shaped like faster-whisper's `Segment`/`Word` and pyannote's speaker turns, in seconds. Nothing
here imports gRPC or protobuf: cores take and return these, servicers convert them.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

SAMPLE_RATE = 16_000
"""Sample rate of all PCM inside the mesh."""

BYTES_PER_SAMPLE = 2
"""PCM inside the mesh is signed 16-bit little-endian mono."""


@dataclass(frozen=True, slots=True)
class Word:
    """A recognised word with its timing (seconds from the start of the audio)."""

    start: float
    end: float
    word: str
    probability: float
    speaker: str = ""


def word_key(text: str) -> str:
    """What two transcripts of one word share: NFC, lower case, letters and digits only (so
    "Socorro," is "socorro", "está" is not "esta"). The one comparison of words between
    hypotheses (streaming agreement, ROVER slots, loop guards)."""
    return "".join(ch for ch in unicodedata.normalize("NFC", text).lower() if ch.isalnum())


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of recognised speech."""

    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    speaker: str = ""
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0


@dataclass(frozen=True, slots=True)
class SpeakerTurn:
    """A time range attributed to one speaker."""

    speaker: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A time range without a speaker (for example an overlap region)."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """How far a core has got; servicers turn it into a `Progress` message."""

    fraction: float
    audio_processed: float = 0.0
    audio_total: float = 0.0
    eta: float = 0.0
    message: str = ""


@dataclass(slots=True)
class MediaReport:
    """What a probe learnt about an input file."""

    container: str = ""
    codec: str = ""
    sample_rate_hz: int = 0
    channels: int = 0
    duration: float = 0.0
    bit_rate: int = 0
    size_bytes: int = 0
    has_video: bool = False
    estimated_processing: float = 0.0
    """Seconds the chain is expected to take for this input (0 = no estimate)."""
    extra: dict[str, str] = field(default_factory=dict)
