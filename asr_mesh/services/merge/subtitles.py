"""SRT and WebVTT cues that follow broadcast subtitling practice. Pure.

Rules (`MergeOptions` holds the numbers):
- At most 2 lines of at most 42 characters; SRT's speaker prefix (`[SPEAKER_00]` or the display
  name, shortened to 20 characters) counts inside the limit. VTT carries the speaker in a voice tag
  (`<v SPEAKER_00>`), which players do not print as text, so it does not count.
- A cue holds words of one re-cut segment only, so it never spans two speakers or two sentences;
  words are never split across cues and appear exactly once, in order.
- Cues are balanced (`pack_cues`): the cut points minimise unused space (squared), so fewer, fuller
  cues win when they fit and a sentence that needs more cues is spread evenly rather than leaving
  a one-word cue at the end; cuts prefer punctuation (`,` `;` `:`) and pauses of 0.5 s or more.
- On screen 0.7–7 s: a cue's words span at most 7 s; a cue shorter than 0.7 s
  is extended into the following silence, up to the next cue's start (and the audio's end when
  known); when that is not room enough (the last words of a file) it starts earlier instead, into
  the silence before it. Short cues remain only where speech precedes and follows at once.
- SRT has no escaping, so "-->" inside a word is written "->"; VTT escapes `& < >` instead.
- Cues never overlap: an overlapping end is trimmed to the next cue's start; times are whole
  milliseconds and every cue lasts at least 1 ms (WebVTT requires end > start).
- The line break is chosen to balance the two lines (the longer line as short as possible, ties
  to a shorter top line).

A single word longer than a line (a URL, a pasted code) cannot meet the limit; it gets a cue of its
own rather than being cut.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import srt

from asr_mesh.services.common.domain import Segment
from asr_mesh.services.merge.core import DocumentInfo, MergeOptions


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: whole-millisecond times, one speaker, laid-out lines."""

    start_ms: int
    end_ms: int
    speaker: str
    lines: tuple[str, ...]
    """Display lines; for SRT the first item may be (or begin with) the speaker prefix."""
    words: tuple[str, ...]


@dataclass(frozen=True)
class _Token:
    text: str
    start: float
    end: float


def layout_lines(
    items: Sequence[str], max_chars: int, max_lines: int = 2
) -> tuple[str, ...] | None:
    """Lay unbreakable items out in at most `max_lines` lines of `max_chars`; None if impossible."""
    joined = " ".join(items)
    if len(joined) <= max_chars:
        return (joined,)
    if max_lines < 2:
        return None
    best: tuple[str, str] | None = None
    best_key: tuple[int, int] | None = None
    for k in range(1, len(items)):
        top, bottom = " ".join(items[:k]), " ".join(items[k:])
        if len(top) > max_chars or len(bottom) > max_chars:
            continue
        key = (max(len(top), len(bottom)), len(top))
        if best_key is None or key < best_key:
            best, best_key = (top, bottom), key
    return best


def _tokens(segment: Segment) -> list[_Token]:
    if segment.words:
        return [_Token(w.word, w.start, w.end) for w in segment.words]
    # No word timestamps: spread the segment's time over its words by length, for layout only.
    parts = segment.text.split()
    weights = [len(p) + 1 for p in parts]
    total = sum(weights) or 1
    span = segment.end - segment.start
    tokens, elapsed = [], 0
    for part, weight in zip(parts, weights):
        start = segment.start + span * elapsed / total
        elapsed += weight
        tokens.append(_Token(part, start, segment.start + span * elapsed / total))
    return tokens


_PAUSE_BREAK_S = 0.5
"""A silence at least this long between two words is a good place to start a new cue."""
_BREAK_AFTER = (",", ";", ":", "—", "–", ")", "»", "”")
_WEAK_BREAK = 0.15
"""Cost of a cue break that is at neither punctuation nor a pause (in squared-slack units)."""


def _is_good_break(run: Sequence[_Token], k: int) -> bool:
    """Whether a cue may end after token k-1 without splitting a phrase: punctuation or a pause."""
    if k >= len(run):
        return True
    before = run[k - 1]
    return before.text.endswith(_BREAK_AFTER) or run[k].start - before.end >= _PAUSE_BREAK_S


def pack_cues(
    tokens: Sequence[_Token], head: Sequence[str], options: MergeOptions
) -> list[tuple[int, int]]:
    """Split one segment's tokens into cues: (start, end) token ranges.

    Exact dynamic programme over break points, not greedy filling: each cue must fit the lines
    and last at most `max_cue_s` (a lone token always fits); among those layouts it minimises the
    sum over cues of (unused share of the cue's characters)², plus a small cost for a break that
    is at neither punctuation nor a pause. Squared slack makes fewer, fuller cues win when they
    fit and, when they do not, spreads words evenly: no trailing one-word cue after a full one.
    O(n·k) layouts for n tokens and at most k per cue (k is ~15 for 2 × 42 characters).
    """
    n = len(tokens)
    capacity = options.max_lines * options.max_line_chars
    best = [math.inf] * (n + 1)
    back = [0] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        if best[i] == math.inf:
            continue
        for j in range(i + 1, n + 1):
            run = tokens[i:j]
            too_long = j - i > 1 and max(t.end for t in run) - run[0].start > options.max_cue_s
            texts = [*head, *(t.text for t in run)]
            if j - i > 1 and (
                too_long or layout_lines(texts, options.max_line_chars, options.max_lines) is None
            ):
                break  # longer runs only get longer
            slack = max(capacity - len(" ".join(texts)), 0) / capacity
            cost = best[i] + slack * slack + (0.0 if _is_good_break(tokens, j) else _WEAK_BREAK)
            if cost < best[j] - 1e-12:
                best[j], back[j] = cost, i
    cuts, j = [], n
    while j > 0:
        cuts.append((back[j], j))
        j = back[j]
    return cuts[::-1]


def build_cues(
    segments: Sequence[Segment],
    options: MergeOptions,
    *,
    prefix: Callable[[str], str] | None = None,
    audio_duration: float = 0.0,
) -> list[Cue]:
    """Cut segments into cues. `prefix(speaker)` gives the text shown before the words (SRT)."""
    cues: list[Cue] = []
    for seg in segments:
        head = [prefix(seg.speaker)] if prefix and seg.speaker else []
        tokens = _tokens(seg)
        for start, end in pack_cues(tokens, head, options):
            cues.append(_cue(tokens[start:end], head, seg.speaker, options))
    return _fix_timing(cues, options, audio_duration)


def _cue(run: list[_Token], head: list[str], speaker: str, options: MergeOptions) -> Cue:
    words = [t.text for t in run]
    lines = layout_lines(head + words, options.max_line_chars, options.max_lines)
    if lines is None:  # one overlong word: it still gets shown, alone
        lines = tuple(head + words) if options.max_lines > 1 else (" ".join(head + words),)
    start = round(run[0].start * 1000)
    end = round(max(t.end for t in run) * 1000)
    return Cue(start, max(end, start), speaker, lines, tuple(words))


def _fix_timing(cues: list[Cue], options: MergeOptions, audio_duration: float) -> list[Cue]:
    min_ms, max_ms = round(options.min_cue_s * 1000), round(options.max_cue_s * 1000)
    audio_end_ms = round(audio_duration * 1000) if audio_duration > 0 else None
    starts = [c.start_ms for c in cues]
    ends = [min(c.end_ms, c.start_ms + max_ms) for c in cues]
    # Trim an end that runs into the next cue (Whisper words of adjacent segments may overlap).
    for i in range(len(cues) - 1):
        if ends[i] > starts[i + 1] > starts[i]:
            ends[i] = starts[i + 1]
    # Out-of-order or zero-length timings: push forward so cues are ordered and last ≥ 1 ms.
    prev_end = 0
    for i in range(len(cues)):
        starts[i] = max(starts[i], prev_end)
        ends[i] = max(ends[i], starts[i] + 1)
        prev_end = ends[i]
    # Extend short cues into the silence that follows, never into the next cue.
    for i in range(len(cues)):
        if ends[i] - starts[i] >= min_ms:
            continue
        limit = starts[i + 1] if i + 1 < len(cues) else audio_end_ms
        target = starts[i] + min_ms
        if limit is not None:
            target = min(target, max(limit, ends[i]))
        ends[i] = max(ends[i], target)
        if ends[i] - starts[i] < min_ms:
            # The next cue or the end of the audio is too close (a last word at the very end of
            # a file): start earlier instead, into the silence before, never into the last cue.
            floor = ends[i - 1] if i > 0 else 0
            starts[i] = max(floor, min(starts[i], ends[i] - min_ms))
    return [Cue(s, e, c.speaker, c.lines, c.words) for s, e, c in zip(starts, ends, cues)]


def _short_name(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    cut = name[: limit - 1]
    # Cut at a word boundary when there is one, so "Joaquim José da Silva..." keeps whole words.
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip() + "…"


def srt_safe(text: str) -> str:
    """SRT has no escaping: "-->" inside text could be read as a timing line, so it becomes "->"."""
    return text.replace("-->", "->")


def srt_prefix(info: DocumentInfo, options: MergeOptions) -> Callable[[str], str]:
    """`[SPEAKER_00]` or `[Ana]`: the speaker shown at the start of every SRT cue."""
    return lambda label: f"[{_short_name(info.display_name(label), options.max_prefix_name_chars)}]"


def render_srt(segments: Sequence[Segment], info: DocumentInfo, options: MergeOptions) -> str:
    """SubRip document (`00:00:01,000` times, indexes from 1), composed by the `srt` library."""
    cues = build_cues(
        segments, options, prefix=srt_prefix(info, options), audio_duration=info.duration
    )
    subtitles = [
        srt.Subtitle(
            index=i,
            start=timedelta(milliseconds=cue.start_ms),
            end=timedelta(milliseconds=cue.end_ms),
            content="\n".join(srt_safe(line) for line in cue.lines),
        )
        for i, cue in enumerate(cues, start=1)
    ]
    composed: str = srt.compose(subtitles, reindex=False)
    return composed


def vtt_timestamp(ms: int) -> str:
    """Milliseconds → WebVTT `hh:mm:ss.ttt`."""
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: & < > must be escaped, which also keeps "-->" out of payloads.
    return html.escape(text, quote=False)


def render_vtt(segments: Sequence[Segment], info: DocumentInfo, options: MergeOptions) -> str:
    """WebVTT document: `WEBVTT` header, numbered cues, speaker as `<v NAME>` voice span."""
    cues = build_cues(segments, options, audio_duration=info.duration)
    out = ["WEBVTT", ""]
    for i, cue in enumerate(cues, start=1):
        lines = [_vtt_escape(line) for line in cue.lines]
        if cue.speaker:
            name = _vtt_escape(" ".join(info.display_name(cue.speaker).split()))
            lines[0] = f"<v {name}>{lines[0]}"
        timing = f"{vtt_timestamp(cue.start_ms)} --> {vtt_timestamp(cue.end_ms)}"
        out += [str(i), timing, *lines, ""]
    return "\n".join(out)
