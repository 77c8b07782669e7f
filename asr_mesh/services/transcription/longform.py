"""Long audio: VAD in bounded blocks, windows cut at silences, batch sizes. Pure functions.

Why faster-whisper's BatchedInferencePipeline loses accuracy on long speech (figures and the
command in docs/benchmarks.md): by default it glues VAD speech pieces (160 ms minimum silence)
end to end into 30 s chunks with the pauses removed, and decodes each chunk *without
timestamps*. On dense speech the model then skips whole sentences and chunk edges fall inside
sentences; with timestamps on those same chunks the unfinished sentence at each chunk end is
dropped instead. Sequential decoding avoids both: it emits timestamps and moves its 30 s window
to the last complete segment.

The fix here keeps batching but gives each window what sequential decoding has: windows are
cut on the real timeline at the longest pauses (no gluing, a sentence is never split when a
pause exists), and decoded *with* timestamps; windows whose output looks failed (Whisper's
compression-ratio and log-probability rules) are decoded again with the fallback schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from asr_mesh.services.common.domain import SAMPLE_RATE
from asr_mesh.services.common.pcm import pcm_to_float32

if TYPE_CHECKING:
    from faster_whisper.vad import VadOptions

WINDOW_S = 30.0
"""Whisper's input length: a window never exceeds it."""
LONG_FORM_MIN_S = 60.0
"""Audio at least this long takes the long-form path. Below it there are at most two windows,
batching gains nothing, and sequential decoding stays identical to plain faster-whisper."""
CUT_GAP_FACTOR = 0.5
"""A window is cut at the last pause at least this fraction as long as the longest candidate."""
VAD_BLOCK_S = 300.0
TAIL_MIN_S = 1.0
"""Speech left after a window's last segment that is decoded again. Whisper sometimes stops a
window early (end of text after a complete sentence) and batched decoding, unlike sequential,
does not slide to that point; such tails go into the next batch."""
MAX_TAIL_ATTEMPTS = 1
"""VAD runs on blocks of this many seconds, so 1-hour audio never needs one huge float copy."""


@dataclass(frozen=True)
class VadParams:
    """Silero VAD settings for the long-form path (faster-whisper's VadOptions fields)."""

    threshold: float = 0.5
    min_silence_duration_ms: int = 160
    speech_pad_ms: int = 150
    min_speech_duration_ms: int = 0

    def options(self, max_speech_s: float) -> VadOptions:
        from faster_whisper.vad import VadOptions

        return VadOptions(
            threshold=self.threshold,
            min_silence_duration_ms=self.min_silence_duration_ms,
            speech_pad_ms=self.speech_pad_ms,
            min_speech_duration_ms=self.min_speech_duration_ms,
            max_speech_duration_s=max_speech_s,
        )


@dataclass(frozen=True)
class Window:
    """Speech ranges decoded as one unit: their audio glued end to end, at most WINDOW_S.

    The pauses between ranges longer than the VAD padding are left out (a pause keeps its
    padding on both sides, 0.3 s at the default 150 ms), so a window holds up to 30 s of speech
    instead of 30 s of timeline; `to_original` maps a time inside the glued audio back to the file.
    """

    pieces: tuple[tuple[float, float], ...]
    attempt: int = 0
    """0 for a planned window; n for speech left undecoded by a window of attempt n - 1."""

    @property
    def start(self) -> float:
        return self.pieces[0][0]

    @property
    def end(self) -> float:
        return self.pieces[-1][1]

    @property
    def duration(self) -> float:
        """Seconds of glued audio."""
        return sum(b - a for a, b in self.pieces)

    def to_original(self, t: float) -> float:
        """Time in the glued window audio → time in the original audio."""
        done = 0.0
        for a, b in self.pieces:
            if t <= done + (b - a):
                return a + max(t - done, 0.0)
            done += b - a
        return self.end

    def after(self, t: float) -> list[tuple[float, float]]:
        """The speech of this window after time `t` of the original audio."""
        return [(max(a, t), b) for a, b in self.pieces if b > t]

    def samples(self, audio: np.ndarray) -> np.ndarray:
        """The window's glued audio (float32) from the whole file's samples."""
        parts = [
            to_float(audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]) for a, b in self.pieces
        ]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 PCM samples → float32 in [-1, 1) (as faster-whisper scales); float passes through."""
    if samples.dtype == np.int16:
        return pcm_to_float32(samples)  # one float copy, scaled in place
    return samples.astype(np.float32, copy=False)


def speech_ranges(
    samples: np.ndarray,
    detect: Callable[[np.ndarray], list[tuple[float, float]]],
    block_s: float = VAD_BLOCK_S,
) -> list[tuple[float, float]]:
    """Speech ranges (seconds) of the whole audio, running `detect` block by block."""
    tracker = SpeechTracker(detect, block_s)
    return tracker.push(samples) + tracker.finish()


class SpeechTracker:
    """VAD over audio that arrives in pieces, one block of `block_s` seconds at a time.

    `push` takes the next samples and returns the speech ranges settled by them; `finish` the
    rest once the audio has ended. The ranges are the same however the audio is split into
    pieces (`speech_ranges` is this class fed the whole array), and at most one block plus one
    piece of audio is held. A range touching the end of a block may continue in the next one,
    so the next block starts at that range's start instead and the range is detected again whole.
    """

    def __init__(
        self,
        detect: Callable[[np.ndarray], list[tuple[float, float]]],
        block_s: float = VAD_BLOCK_S,
    ):
        self._detect = detect
        self._block_s = block_s
        self._pieces: list[np.ndarray] = []
        self._offset = 0  # sample index of the first held sample
        self._held = 0  # samples held
        self._start = 0.0  # seconds: where the next block starts
        self.processed = 0.0
        """Seconds of audio examined and settled."""

    @property
    def received(self) -> float:
        """Seconds of audio pushed so far."""
        return (self._offset + self._held) / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> list[tuple[float, float]]:
        if len(samples):
            self._pieces.append(samples)
            self._held += len(samples)
        out: list[tuple[float, float]] = []
        while self._start + self._block_s < self.received:  # more audio after this block
            out += self._step(self._start + self._block_s, more=True)
        return out

    def finish(self) -> list[tuple[float, float]]:
        total, out = self.received, []
        while self._start < total:
            end = min(self._start + self._block_s, total)
            out += self._step(end, more=end < total)
        self.processed = total
        return out

    def _step(self, end: float, more: bool) -> list[tuple[float, float]]:
        start = self._start
        block = to_float(self._take(int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)))
        found = [(start + a, start + b) for a, b in self._detect(block)]
        if more and found and found[-1][1] >= end - 1.0 and found[-1][0] > start + 1.0:
            found, resume = found[:-1], found[-1][0]
        else:
            resume = end
        self._start = self.processed = resume
        self._drop(int(resume * SAMPLE_RATE))
        return found

    def _take(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) (absolute indices) from the held pieces; a view when in one piece."""
        parts, at = [], self._offset
        for piece in self._pieces:
            a, b = max(lo - at, 0), min(hi - at, len(piece))
            if a < b:
                parts.append(piece[a:b])
            at += len(piece)
            if at >= hi:
                break
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _drop(self, upto: int) -> None:
        """Forget samples before absolute index `upto`."""
        while self._pieces and self._offset + len(self._pieces[0]) <= upto:
            self._offset += len(self._pieces[0])
            self._held -= len(self._pieces[0])
            self._pieces.pop(0)
        if self._pieces and self._offset < upto:
            cut = upto - self._offset
            self._pieces[0] = self._pieces[0][cut:]
            self._offset, self._held = upto, self._held - cut


def plan_windows(
    speech: list[tuple[float, float]],
    max_s: float = WINDOW_S,
    min_fill: float = 0.75,
    attempt: int = 0,
) -> list[Window]:
    """Group speech ranges into windows of at most `max_s` seconds of speech.

    Each window takes as many consecutive ranges as fit, then gives back the tail after the
    last long pause found beyond `min_fill` of the window (a pause at least CUT_GAP_FACTOR as
    long as the longest one there), so cuts fall between sentences and windows stay full. Ranges
    longer than `max_s` (VAD already splits at `max_s`) are cut into pieces.
    """
    ranges = split_long(speech, max_s)
    windows: list[Window] = []
    i = 0
    while i < len(ranges):
        fill = ranges[i][1] - ranges[i][0]
        j = i
        while j + 1 < len(ranges) and fill + ranges[j + 1][1] - ranges[j + 1][0] <= max_s:
            j += 1
            fill += ranges[j][1] - ranges[j][0]
        if j + 1 < len(ranges):
            candidates, fill = [], 0.0
            for k in range(i, j + 1):
                fill += ranges[k][1] - ranges[k][0]
                if fill >= min_fill * max_s:
                    candidates.append((k, ranges[k + 1][0] - ranges[k][1]))
            if candidates:
                longest = max(gap for _, gap in candidates)
                j = max(k for k, gap in candidates if gap >= CUT_GAP_FACTOR * longest)
        windows.append(Window(tuple(ranges[i : j + 1]), attempt))
        i = j + 1
    return windows


def split_long(
    speech: list[tuple[float, float]], max_s: float = WINDOW_S
) -> list[tuple[float, float]]:
    """Cut ranges longer than `max_s` into pieces that fit a window."""
    out = []
    for a, b in speech:
        while b - a > max_s:
            out.append((a, a + max_s - 1.0))
            a += max_s - 1.0
        out.append((a, b))
    return out


def batch_size_for(duration_s: float, device: str, free_bytes: int | None, cap: int) -> int:
    """Windows per batch from the audio duration and, on a GPU, free memory.

    More windows than exist gain nothing; on CPU batches above 8 only add latency before the
    first segment (no throughput gain beyond 8 measured on 2 cores: docs/benchmarks.md); on CUDA
    each window of a batch costs about 60 MB of activations for base and 300 MB for large-v3 in
    float16, so the batch is capped by free memory, leaving half of it for other requests.
    """
    windows = max(1, int(np.ceil(duration_s / WINDOW_S)))
    size = min(windows, 8 if device != "cuda" else 16)
    if device == "cuda" and free_bytes is not None:
        size = min(size, max(1, int(free_bytes * 0.5 // (300 << 20))))
    return max(1, min(size, cap))


def batches(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for k in range(0, len(windows), size):
        yield windows[k : k + size]
