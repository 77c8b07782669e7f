"""Hallucination guards: pure functions over audio samples and domain segments.

Whisper invents text in four recognisable ways: on silence or noise (segments the model itself
marks as probably not speech), in loops that repeat one phrase over and over, at the end of the
audio or in a pause (a phrase from the context "said" in a few milliseconds with near-zero word
probabilities, or words where VAD heard no speech at all), and, when VAD throws everything away,
by staying silent on audio that does hold speech. These functions detect each case; `core`
decides what to do.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from asr_mesh.services.common.domain import Segment, Word, word_key

NO_SPEECH_THRESHOLD = 0.6
"""faster-whisper's own: a window is silent when no_speech_prob exceeds this..."""
LOG_PROB_THRESHOLD = -1.0
"""...and the average log probability of its tokens is below this."""
COMPRESSION_RATIO_THRESHOLD = 2.4
"""Above this gzip ratio a window's text is repetitive: Whisper's failure signal."""
MAX_REPEATS = 3
"""No phrase may appear more than this many times in a row unless the audio says so."""
MAX_PHRASE_WORDS = 8
"""Longest phrase (in words) checked for loops."""
INVENTED_MAX_PROBABILITY = 0.3
"""A segment whose words average below this probability..."""
INVENTED_MAX_SECONDS_PER_WORD = 0.1
"""...and that lasts less than this per word (faster than anyone speaks) was not said."""
SPEECH_MARGIN_S = 0.5
"""Word timings may run this far outside a VAD speech range and still count as inside it."""
ENERGY_FLOOR_DBFS = -50.0
"""RMS level above which audio is considered to hold signal (for the no-VAD fallback)."""


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of float [-1, 1) or int16 samples in dBFS (-inf for digital silence)."""
    if samples.size == 0:
        return -math.inf
    data = samples.astype(np.float32)
    if samples.dtype == np.int16:
        data /= 32768.0
    rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


QUIET_LEVEL_DBFS = -30.0
"""Speech quieter than this (90th percentile of 20 ms frame levels) is brought up..."""
QUIET_TARGET_DBFS = -20.0
"""...to about this level, by one static gain for the whole audio (no dynamics)."""
QUIET_MAX_GAIN_DB = 30.0


def speech_level_dbfs(samples: np.ndarray, frame: int = 320) -> float:
    """Level of the loud part of the audio: 90th percentile of 20 ms frame RMS levels (dBFS).

    A percentile rather than the mean so that pauses and silence do not pull it down, and a
    high one so that the voice, not the noise floor, sets it.
    """
    n = len(samples) // frame
    if n == 0:
        return rms_dbfs(samples)
    data = samples[: n * frame].astype(np.float32).reshape(n, frame)
    if samples.dtype == np.int16:
        data /= 32768.0
    power = np.mean(np.square(data, dtype=np.float64), axis=1)
    level = float(np.percentile(power, 90))
    return 10 * math.log10(level) if level > 0 else -math.inf


def quiet_gain(samples: np.ndarray) -> float:
    """A linear gain (1.0 = none) for speech under QUIET_LEVEL_DBFS, capped so peaks stay < 0.95.

    Whisper's features depend on the absolute level: a quiet recording of clear speech loses
    words that the same recording at a normal level keeps. A single static gain changes nothing
    else (unlike loudness normalisation, which compresses dynamics).
    """
    level = speech_level_dbfs(samples)
    if not math.isfinite(level) or level >= QUIET_LEVEL_DBFS:
        return 1.0
    gain_db = min(QUIET_TARGET_DBFS - level, QUIET_MAX_GAIN_DB)
    peak = float(np.max(np.abs(samples))) / (32768.0 if samples.dtype == np.int16 else 1.0)
    if peak > 0:
        gain_db = min(gain_db, 20 * math.log10(0.95 / peak))
    return 10 ** (gain_db / 20) if gain_db > 0 else 1.0


def apply_gain(samples: np.ndarray, gain: float) -> np.ndarray:
    """`samples` (int16 or float) scaled by `gain`, in the same dtype; no copy when gain is 1."""
    if gain == 1.0:
        return samples
    scaled = samples.astype(np.float32) * np.float32(gain)
    if samples.dtype == np.int16:
        clipped: np.ndarray = np.clip(scaled, -32768, 32767).astype(np.int16)
        return clipped
    return scaled


def has_energy(samples: np.ndarray, floor_dbfs: float = ENERGY_FLOOR_DBFS) -> bool:
    """Whether the signal is louder than the floor: worth decoding without VAD."""
    return rms_dbfs(samples) > floor_dbfs


def is_silent(segment: Segment) -> bool:
    """Whisper's own no-speech rule, applied to a segment that was emitted anyway."""
    return segment.no_speech_prob > NO_SPEECH_THRESHOLD and segment.avg_logprob < LOG_PROB_THRESHOLD


def is_squeezed(segment: Segment) -> bool:
    """Whisper's end-of-audio invention: improbable words squeezed into a few milliseconds.

    Seen on a 30 s conversation: "Bom dia, estou verificando aqui no sistema." (a phrase from the
    context) at 30.10-30.18 s, word probabilities 0.00-0.24, after the last speech.
    """
    words = segment.words
    if not words:
        return False
    span = max(w.end for w in words) - min(w.start for w in words)
    mean = sum(w.probability for w in words) / len(words)
    return mean < INVENTED_MAX_PROBABILITY and span < INVENTED_MAX_SECONDS_PER_WORD * len(words)


UNTIMED_MIN_WORDS = 3
"""A run of at least this many words given (almost) no time at all..."""
UNTIMED_MAX_SECONDS_PER_WORD = 0.05
"""...under this per word (twenty words a second) was not heard in the audio."""


def untimed_runs(words: list[Word]) -> list[tuple[int, int]]:
    """Index ranges [start, end) of runs of words the audio gives no time to.

    Whisper sometimes repeats a sentence it has just transcribed, confidently, as a pile of
    zero-length words at the end of the audio (seen streaming a conversation: "Obrigado pela
    atenção e tenha um ótimo dia." a second time, eight words at 5.96-5.96 s, probabilities
    0.95-1.00). No one says three words in 0.15 s, so the words were not in the audio, however
    probable the model finds them (`is_squeezed` needs improbable words as well).
    """
    runs: list[tuple[int, int]] = []
    limit = UNTIMED_MAX_SECONDS_PER_WORD
    i = 0
    while i < len(words):
        j = i + 1
        while j < len(words) and words[j].end - words[i].start < limit * (j - i + 1):
            j += 1
        if j - i >= UNTIMED_MIN_WORDS:
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def outside_speech(
    segment: Segment, speech: list[tuple[float, float]], margin: float = SPEECH_MARGIN_S
) -> bool:
    """True when none of the segment's words touches a VAD speech range (± `margin`).

    Text after the last speech or inside a pause was not heard by VAD: Whisper took it from the
    context. Untimed segments and an empty `speech` (VAD heard nothing) are never judged.
    """
    if not speech or not segment.words:
        return False
    import bisect

    starts = [a for a, _ in speech]
    for word in segment.words:
        i = bisect.bisect_right(starts, word.end + margin) - 1
        if i >= 0 and speech[i][1] + margin >= word.start:
            return False
    return True


def is_failed_window(avg_logprob: float, compression_ratio: float, no_speech_prob: float) -> bool:
    """A decoded window that faster-whisper would have retried at a higher temperature."""
    if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
        return False  # silent, not failed: it is dropped, not redone
    return compression_ratio > COMPRESSION_RATIO_THRESHOLD or avg_logprob < LOG_PROB_THRESHOLD


def _audio_says_so(words: list[Word], start: int, size: int, count: int) -> bool:
    """True when each repetition covers its own stretch of audio, as real speech does.

    Looped text from Whisper comes with timings squeezed together (zero-length words, every
    copy in the same fraction of a second); spoken repetitions last about as long each time.
    """
    spans = []
    for k in range(count):
        chunk = words[start + k * size : start + (k + 1) * size]
        spans.append((chunk[0].start, chunk[-1].end))
    first = spans[0][1] - spans[0][0]
    if first <= 0.05 * size:
        return False
    for (_s0, e0), (s1, e1) in zip(spans, spans[1:]):
        if s1 < e0 - 0.05 or (e1 - s1) < 0.5 * first:
            return False
    return True


def find_loops(
    words: list[Word], max_repeats: int = MAX_REPEATS, max_phrase: int = MAX_PHRASE_WORDS
) -> list[tuple[int, int]]:
    """Index ranges [start, end) of words to drop so no phrase repeats more than max_repeats.

    A run of n > max_repeats consecutive copies of a phrase keeps its first max_repeats copies,
    unless every copy has its own stretch of audio (then it was said, and is kept).
    """
    keys = [word_key(w.word) for w in words]
    drops: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        found = False
        for size in range(1, max_phrase + 1):
            phrase = keys[i : i + size]
            if len(phrase) < size or not any(phrase):
                break
            count = 1
            while keys[i + count * size : i + (count + 1) * size] == phrase:
                count += 1
            if count > max_repeats:
                if not _audio_says_so(words, i, size, count):
                    drops.append((i + max_repeats * size, i + count * size))
                i += count * size
                found = True
                break
        if not found:
            i += 1
    return drops


def is_confident(segment: Segment, min_word_probability: float = 0.5) -> bool:
    """Stricter test for text decoded without VAD: the model must not doubt it is speech."""
    if segment.no_speech_prob > NO_SPEECH_THRESHOLD or segment.avg_logprob < LOG_PROB_THRESHOLD:
        return False
    if segment.words:
        mean = sum(w.probability for w in segment.words) / len(segment.words)
        return mean >= min_word_probability
    return True


def _units(segment: Segment) -> list[Word]:
    """A segment's words, or its text tokens as untimed words when it has none."""
    if segment.words:
        return list(segment.words)
    return [Word(0.0, 0.0, token, 1.0) for token in segment.text.split()]


def _rebuild(segment: Segment, kept: list[Word]) -> Segment | None:
    if not kept:
        return None
    if segment.words:
        return replace(
            segment,
            words=tuple(kept),
            text=" ".join(w.word for w in kept),
            end=max(w.end for w in kept),
        )
    return replace(segment, text=" ".join(w.word for w in kept))


class LoopFilter:
    """Cuts phrase loops from a stream of segments, also across segment boundaries.

    `push` returns the segments that can no longer change; the last `hold` segments wait for
    the next ones (a loop often spreads one copy per segment). The words already emitted stay
    as context, so a loop that began in emitted segments is still cut when it goes on.
    """

    def __init__(self, max_repeats: int = MAX_REPEATS, hold: int = 2):
        self.max_repeats = max_repeats
        self.hold = hold
        self.removed = 0  # words removed
        self._context: list[Word] = []
        self._buffer: list[Segment] = []

    def push(self, segment: Segment) -> list[Segment]:
        self._buffer.append(segment)
        return self._release(len(self._buffer) - self.hold)

    def flush(self) -> list[Segment]:
        return self._release(len(self._buffer))

    def _release(self, count: int) -> list[Segment]:
        if count <= 0:
            return []
        self._cut()
        out, self._buffer = self._buffer[:count], self._buffer[count:]
        for segment in out:
            self._context.extend(_units(segment))
        self._context = self._context[-(MAX_PHRASE_WORDS * (self.max_repeats + 1)) :]
        return out

    def _cut(self) -> None:
        units = [_units(s) for s in self._buffer]
        flat = [w for u in units for w in u]
        base = len(self._context)
        drops = find_loops(self._context + flat, self.max_repeats)
        dropped: set[int] = set()
        for a, b in drops:
            if b > base:
                dropped.update(range(max(a, base) - base, b - base))
        if not dropped:
            return
        self.removed += len(dropped)
        rebuilt, k = [], 0
        for segment, seg_units in zip(self._buffer, units):
            kept = [w for j, w in enumerate(seg_units, start=k) if j not in dropped]
            k += len(seg_units)
            new = segment if len(kept) == len(seg_units) else _rebuild(segment, kept)
            if new is not None:
                rebuilt.append(new)
        self._buffer = rebuilt


def cut_loops(segments: list[Segment], max_repeats: int = MAX_REPEATS) -> tuple[list[Segment], int]:
    """Remove looped repetitions from a list of segments; returns them and the words removed."""
    loop_filter = LoopFilter(max_repeats)
    out = [kept for s in segments for kept in loop_filter.push(s)]
    out.extend(loop_filter.flush())
    return out, loop_filter.removed
