"""Words × speaker turns → speaker-attributed, re-cut segments. Pure: no gRPC, no environment.

`merge(segments, turns, options)` is the whole stage:

1. **Turns are made exclusive** (`exclusive_turns`). The contract promises exclusive turns, but
   float rounding or a foreign diarizer can leave overlaps; where turns overlap, the shortest
   active turn wins the overlapping stretch (it is usually the interjection that would otherwise
   vanish inside a long turn). Adjacent pieces of one speaker are joined. O(T log T).
2. **Each word gets a speaker** (`SpeakerIndex.speaker_for`): the speaker whose turns overlap the
   word longest (summed per speaker); ties go to the speaker of the earliest overlapping turn.
   A word overlapping no turn (in a gap, or a zero-length word) gets the nearest turn, ties to the
   earlier turn. Two bisects per word on the sorted turn boundaries, then a walk over the turns
   the word overlaps: O((W + T) log(W + T)) for words in time order that do not overlap each
   other (what Whisper emits), since such words and exclusive turns overlap in at most W + T
   pairs. Whenever turns were given, every word gets a speaker.
   Without turns, words keep the speaker they came with (word's, else segment's; normally empty).
3. **Segments are re-cut** (`split_words`), only ever splitting the recogniser's segments, never
   joining them: a new segment starts on a speaker change, after a word that ends a sentence
   (`. ? ! …`, closing quotes/brackets allowed after it, a few PT-BR abbreviations such as
   "Sr." excepted) and on a pause longer than `pause_split_s` (1.0 s by default: longer than the
   breath pauses inside a Portuguese sentence, shorter than the pause between two speakers'
   utterances in conversation). Segment text is the words joined with single spaces, NFC.
   Segments without words (word timestamps off) are attributed as a whole and kept unsplit.
4. **Labels are renumbered** `SPEAKER_00`, `SPEAKER_01`, ... in order of first appearance in the
   transcript; speakers that have turns but no words follow, in order of their first turn, so
   every label used in any output (RTTM included) is in `MergeResult.speakers`.
5. **Optional PT-BR inverse text normalisation** (`MergeOptions.inverse_text_normalization`, off
   by default; `itn.py`): "mil duzentos e cinquenta reais" → "R$ 1.250,00" inside each re-cut
   segment; a rewritten span of words becomes one word with the span's timing.

Each step runs in its own OpenTelemetry span (`merge.attribute`, `merge.segment`, `merge.itn`)
with the counts as attributes; only the API is used, so without a configured provider they cost
nothing.

Word and turn times are cleaned rather than refused where the intent is obvious (a negative time
becomes 0, a word ending before it starts becomes zero-length); a turn that ends before it starts
or has no speaker label is refused with `InvalidInput`, as that is a diarizer bug worth surfacing.
"""

from __future__ import annotations

import heapq
import itertools
import math
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from opentelemetry import trace

from asr_mesh.services.common.domain import Segment, SpeakerTurn, Word
from asr_mesh.services.common.domain_errors import InvalidInput
from asr_mesh.services.merge.itn import normalize_segments

_tracer = trace.get_tracer(__name__)

PAUSE_SPLIT_S = 1.0
"""A gap between two words longer than this (seconds) starts a new segment."""

SENTENCE_END = (".", "?", "!", "…")
_CLOSERS = "\"'”’»)]"
# Abbreviations common in PT-BR speech transcripts that end in a dot but rarely end a sentence.
_ABBREVIATIONS = frozenset(
    {
        "sr.",
        "sra.",
        "srs.",
        "sras.",
        "srta.",
        "dr.",
        "dra.",
        "drs.",
        "prof.",
        "profa.",
        "av.",
        "exmo.",
        "exma.",
        "v.ex.ª",
        "p.ex.",
        "nº.",
        "n.º",
        "pág.",
        "cap.",
    }
)


class OutputFormat(str, Enum):
    """Documents the merge stage renders (mirrors asr.common.v1.OutputFormat)."""

    JSON = "json"
    SRT = "srt"
    VTT = "vtt"
    TXT = "txt"
    RTTM = "rttm"


@dataclass(frozen=True)
class MergeOptions:
    """Tunables of the merge; the server fills them from `MergeSettings`."""

    pause_split_s: float = PAUSE_SPLIT_S
    max_line_chars: int = 42
    max_lines: int = 2
    min_cue_s: float = 0.7
    max_cue_s: float = 7.0
    paragraph_pause_s: float = 2.0
    """Without speakers, a TXT paragraph ends at a pause at least this long."""
    max_prefix_name_chars: int = 20
    """Display names longer than this are shortened in SRT prefixes so text still fits a line."""
    inverse_text_normalization: bool = False
    """Write spoken numbers, money, percentages, dates and times as digits (`itn.py`)."""

    def __post_init__(self) -> None:
        if self.max_lines not in (1, 2):
            raise ValueError("max_lines must be 1 or 2")
        if not 0 < self.min_cue_s < self.max_cue_s:
            raise ValueError("need 0 < min_cue_s < max_cue_s")
        if self.max_line_chars < 10:
            raise ValueError("max_line_chars must be at least 10")


DEFAULT_OPTIONS = MergeOptions()


@dataclass(frozen=True)
class DocumentInfo:
    """Request facts the documents carry besides the transcript."""

    language: str = ""
    duration: float = 0.0
    """Audio duration in seconds; 0 when unknown (documents then use the transcript's end)."""
    recording_id: str = ""
    trace_id: str = ""
    speaker_names: Mapping[str, str] = field(default_factory=dict)
    """Display names keyed by the new labels ("SPEAKER_00" → "Ana"); unknown labels are ignored."""

    def display_name(self, label: str) -> str:
        """The caller's name for a label (NFC, whitespace collapsed), else the label itself."""
        name = " ".join(nfc(self.speaker_names.get(label, "")).split())
        return name or label


@dataclass(frozen=True)
class MergeResult:
    """Re-cut segments, labels in order of first appearance, and the exclusive relabelled turns."""

    segments: tuple[Segment, ...]
    speakers: tuple[str, ...]
    turns: tuple[SpeakerTurn, ...]


@dataclass(frozen=True)
class RenderedDocument:
    """One rendered document (UTF-8 text, NFC)."""

    format: OutputFormat
    content: str
    file_extension: str
    media_type: str


def nfc(text: str) -> str:
    """Unicode NFC, so "ç" typed as c + combining cedilla and as one code point compare equal."""
    return unicodedata.normalize("NFC", text)


def speaker_label(index: int) -> str:
    """The stable label of the index-th speaker to appear: 0 → "SPEAKER_00"."""
    return f"SPEAKER_{index:02d}"


def ends_sentence(word: str) -> bool:
    """True when the word closes a sentence (". ? ! …", optionally followed by quotes/brackets)."""
    core = word.strip().rstrip(_CLOSERS)
    return core.endswith(SENTENCE_END) and core.lower() not in _ABBREVIATIONS


def exclusive_turns(turns: Iterable[SpeakerTurn]) -> list[SpeakerTurn]:
    """Sorted, non-overlapping turns; overlaps go to the shortest active turn (see module doc).

    Raises InvalidInput for a turn without a speaker label or one that ends before it starts.
    Zero-length turns only survive when nothing else does (so a word still gets a speaker).
    """
    checked: list[SpeakerTurn] = []
    for i, turn in enumerate(turns):
        speaker = nfc(turn.speaker.strip())
        if not speaker:
            raise InvalidInput(
                f"speaker turn {i} has no speaker label", field=f"turns[{i}].speaker"
            )
        if not (math.isfinite(turn.start) and math.isfinite(turn.end)):
            raise InvalidInput(
                f"speaker turn {i} has a time that is not a finite number", field=f"turns[{i}]"
            )
        if turn.end < turn.start:
            raise InvalidInput(
                f"speaker turn {i} ({speaker}) ends at {turn.end:.3f} s, before it starts at "
                f"{turn.start:.3f} s",
                field=f"turns[{i}].end_offset",
            )
        checked.append(SpeakerTurn(speaker, max(turn.start, 0.0), max(turn.end, 0.0)))
    if not checked:
        return []

    order = sorted(
        range(len(checked)), key=lambda i: (checked[i].start, checked[i].end, checked[i].speaker)
    )
    bounds = sorted({t.start for t in checked} | {t.end for t in checked})
    active: list[tuple[float, float, str, int]] = []  # (duration, start, speaker, index) heap
    out: list[SpeakerTurn] = []
    nxt = 0
    for a, b in itertools.pairwise(bounds):
        while nxt < len(order) and checked[order[nxt]].start <= a:
            t = checked[order[nxt]]
            heapq.heappush(active, (t.end - t.start, t.start, t.speaker, order[nxt]))
            nxt += 1
        # Lazy deletion: ended turns are dropped only when they reach the top.
        while active and checked[active[0][3]].end <= a:
            heapq.heappop(active)
        if not active:
            continue
        speaker = active[0][2]
        if out and out[-1].speaker == speaker and out[-1].end == a:
            out[-1] = SpeakerTurn(speaker, out[-1].start, b)
        else:
            out.append(SpeakerTurn(speaker, a, b))
    if not out:
        # Only zero-length turns: keep them as points so words still find a nearest speaker.
        out = sorted(set(checked), key=lambda t: (t.start, t.speaker))
    return out


class SpeakerIndex:
    """Answers "whose word is this?" for exclusive, sorted turns in O(log T) plus overlaps."""

    def __init__(self, turns: Sequence[SpeakerTurn]):
        """`turns` must come from `exclusive_turns` (sorted, non-overlapping)."""
        if not turns:
            raise ValueError("SpeakerIndex needs at least one turn")
        self._turns = list(turns)
        self._starts = [t.start for t in self._turns]
        self._ends = [t.end for t in self._turns]

    def speaker_for(self, start: float, end: float) -> str:
        """Speaker with the most overlap with [start, end]; the nearest turn's if none overlaps."""
        turns = self._turns
        lo = bisect_right(self._ends, start)  # first turn ending after the word starts
        hi = bisect_left(self._starts, end)  # first turn starting at/after the word ends
        if end > start and lo < hi:
            totals: dict[str, float] = {}
            for turn in turns[lo:hi]:
                overlap = min(end, turn.end) - max(start, turn.start)
                totals[turn.speaker] = totals.get(turn.speaker, 0.0) + overlap
            # max() keeps the first of equal keys, i.e. the speaker of the earliest turn.
            best = max(totals, key=totals.__getitem__)
            if totals[best] > 0.0:
                return best
        # No overlap: the word lies in a gap (or is a point). Only the turns around it can be
        # nearest: the last one ending before it, those containing a point word, the next one.
        first = max(min(lo, hi) - 1, 0)
        last = min(max(lo, hi) + 1, len(turns))
        best_i, best_d = first, math.inf
        for i in range(first, last):
            turn = turns[i]
            distance = max(turn.start - end, start - turn.end, 0.0)
            if distance < best_d:
                best_i, best_d = i, distance
        return turns[best_i].speaker


def assign_speakers(
    intervals: Sequence[tuple[float, float]], turns: Iterable[SpeakerTurn]
) -> list[str]:
    """Speaker label for each (start, end) interval; all "" when there are no turns."""
    timeline = exclusive_turns(turns)
    if not timeline:
        return [""] * len(intervals)
    index = SpeakerIndex(timeline)
    return [index.speaker_for(s, max(s, e)) for s, e in intervals]


def clean_word(word: Word) -> Word | None:
    """NFC, stripped text and sane times; None for a word with no text."""
    text = nfc(word.word.strip())
    if not text:
        return None
    start = max(word.start, 0.0) if math.isfinite(word.start) else 0.0
    end = max(word.end, start) if math.isfinite(word.end) else start
    return Word(
        start=start,
        end=end,
        word=text,
        probability=word.probability,
        speaker=nfc(word.speaker.strip()),
    )


def split_words(
    words: Sequence[Word], pause_split_s: float = PAUSE_SPLIT_S
) -> Iterator[list[Word]]:
    """Cut an ordered run of words on speaker change, sentence end and long pauses."""
    run: list[Word] = []
    for word in words:
        if run and (
            word.speaker != run[-1].speaker
            or ends_sentence(run[-1].word)
            or word.start - run[-1].end > pause_split_s
        ):
            yield run
            run = []
        run.append(word)
    if run:
        yield run


def _recut(
    attributed: Sequence[tuple[Segment, list[Word]]],
    index: SpeakerIndex | None,
    options: MergeOptions,
) -> list[Segment]:
    """Split each segment's attributed words into pieces (step 3 of the module doc)."""
    pieces: list[Segment] = []
    for seg, words in attributed:
        if words:
            for run in split_words(words, options.pause_split_s):
                start = run[0].start
                pieces.append(
                    replace(
                        seg,
                        start=start,
                        end=max(start, max(w.end for w in run)),
                        text=nfc(" ".join(w.word for w in run)),
                        words=tuple(run),
                        speaker=run[0].speaker,
                    )
                )
        else:
            text = nfc(" ".join(seg.text.split()))
            if not text:
                continue
            start = max(seg.start, 0.0)
            end = max(seg.end, start)
            speaker = index.speaker_for(start, end) if index else nfc(seg.speaker.strip())
            pieces.append(replace(seg, start=start, end=end, text=text, words=(), speaker=speaker))
    return pieces


def merge(
    segments: Sequence[Segment],
    turns: Sequence[SpeakerTurn] = (),
    options: MergeOptions = DEFAULT_OPTIONS,
) -> MergeResult:
    """Attribute words to speakers, re-cut segments and renumber labels (see module doc)."""
    with _tracer.start_as_current_span("merge.attribute") as span:
        timeline = exclusive_turns(turns)
        index = SpeakerIndex(timeline) if timeline else None
        attributed: list[tuple[Segment, list[Word]]] = []
        word_count = 0
        for seg in segments:
            words = [w for w in (clean_word(w) for w in seg.words) if w is not None]
            fallback = nfc(seg.speaker.strip())
            words = [
                replace(
                    w,
                    speaker=(
                        index.speaker_for(w.start, w.end) if index else (w.speaker or fallback)
                    ),
                )
                for w in words
            ]
            word_count += len(words)
            attributed.append((seg, words))
        span.set_attributes(
            {"asr.words": word_count, "asr.turns": len(timeline), "asr.input_turns": len(turns)}
        )

    with _tracer.start_as_current_span("merge.segment") as span:
        pieces = _recut(attributed, index, options)
        mapping: dict[str, str] = {}
        for piece in pieces:
            for label in [w.speaker for w in piece.words] or [piece.speaker]:
                if label and label not in mapping:
                    mapping[label] = speaker_label(len(mapping))
        for turn in timeline:
            if turn.speaker not in mapping:
                mapping[turn.speaker] = speaker_label(len(mapping))

        def relabel(label: str) -> str:
            return mapping.get(label, "")

        out_segments = tuple(
            replace(
                piece,
                id=i,
                speaker=relabel(piece.speaker),
                words=tuple(replace(w, speaker=relabel(w.speaker)) for w in piece.words),
            )
            for i, piece in enumerate(pieces)
        )
        out_turns = tuple(replace(t, speaker=mapping[t.speaker]) for t in timeline)
        span.set_attributes(
            {
                "asr.input_segments": len(segments),
                "asr.segments": len(pieces),
                "asr.speakers": len(mapping),
            }
        )

    if options.inverse_text_normalization:
        with _tracer.start_as_current_span("merge.itn") as span:
            before = sum(len(s.words) for s in out_segments)
            out_segments = normalize_segments(out_segments)
            span.set_attributes(
                {
                    "asr.words": before,
                    "asr.itn.words_after": sum(len(s.words) for s in out_segments),
                    "asr.itn.segments_changed": sum(
                        a.text != b.text for a, b in zip(out_segments, pieces)
                    ),
                }
            )
    return MergeResult(segments=out_segments, speakers=tuple(mapping.values()), turns=out_turns)
