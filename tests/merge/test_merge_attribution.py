"""Pure-core tests of speaker attribution, turn normalisation, re-segmentation and labels."""

from __future__ import annotations

import itertools
import random
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr_mesh.services.common.domain import Segment, SpeakerTurn, Word
from asr_mesh.services.common.errors import InvalidInput
from asr_mesh.services.merge.core import (
    MergeOptions,
    SpeakerIndex,
    assign_speakers,
    ends_sentence,
    exclusive_turns,
    merge,
)

# Lean on a shared 2-core machine; the properties are cheap, so 150 examples cover plenty.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPEAKERS = ["A", "B", "C", "D"]


def W(start: float, end: float, text: str = "palavra", speaker: str = "") -> Word:
    return Word(start=start, end=end, word=text, probability=0.9, speaker=speaker)


def T(speaker: str, start: float, end: float) -> SpeakerTurn:
    return SpeakerTurn(speaker=speaker, start=start, end=end)


# Times on a 10 ms grid so boundaries coincide often and the tie-breaking paths are exercised.
_grid = st.integers(min_value=0, max_value=400).map(lambda n: n / 100)


@st.composite
def exclusive_turn_lists(draw, min_size: int = 1) -> list[SpeakerTurn]:
    n = draw(st.integers(min_value=min_size, max_value=10))
    t, turns = 0.0, []
    for _ in range(n):
        t += draw(st.integers(min_value=0, max_value=300)) / 100  # gap, may be 0
        dur = draw(st.integers(min_value=1, max_value=500)) / 100
        turns.append(T(draw(st.sampled_from(SPEAKERS)), t, t + dur))
        t += dur
    return turns


@st.composite
def word_intervals(draw) -> list[tuple[float, float]]:
    n = draw(st.integers(min_value=0, max_value=25))
    out = []
    for _ in range(n):
        start = draw(st.integers(min_value=0, max_value=4000)) / 100
        dur = draw(st.integers(min_value=0, max_value=200)) / 100  # zero-length words too
        out.append((start, start + dur))
    return out


def _overlaps(turns, start, end) -> dict[str, float]:
    totals: dict[str, float] = {}
    for t in turns:
        totals[t.speaker] = totals.get(t.speaker, 0.0) + max(
            0.0, min(end, t.end) - max(start, t.start)
        )
    return totals


def _union_length(intervals) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if cur_e is None or s > cur_e:
            total += (cur_e - cur_s) if cur_e is not None else 0.0
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + ((cur_e - cur_s) if cur_e is not None else 0.0)


def _distance(turn, start, end) -> float:
    return max(turn.start - end, start - turn.end, 0.0)


@FAST
@given(turns=exclusive_turn_lists(), words=word_intervals(), seed=st.integers(0, 1000))
def test_attribution_invariants(turns, words, seed):
    labels = assign_speakers(words, turns)
    assert len(labels) == len(words)
    for (start, end), label in zip(words, labels):
        assert label in {t.speaker for t in turns}, "every word gets a speaker when turns exist"
        overlaps = _overlaps(turns, start, end)
        best = max(overlaps.values())
        if best > 0:
            assert overlaps[label] >= best - 1e-9, "chosen speaker has maximal overlap"
        else:
            nearest = min(_distance(t, start, end) for t in turns)
            mine = min(_distance(t, start, end) for t in turns if t.speaker == label)
            assert mine <= nearest + 1e-9, "gap words get the nearest turn"
    # Deterministic, and independent of the order turns arrive in.
    shuffled = list(turns)
    random.Random(seed).shuffle(shuffled)
    assert assign_speakers(words, shuffled) == labels


@FAST
@given(
    turns=st.lists(
        st.tuples(st.sampled_from(SPEAKERS), _grid, st.integers(0, 300).map(lambda n: n / 100)),
        min_size=1,
        max_size=12,
    ),
    words=word_intervals(),
)
def test_overlapping_turns_are_made_exclusive(turns, words):
    raw = [T(s, start, start + dur) for s, start, dur in turns]
    timeline = exclusive_turns(raw)
    for a, b in itertools.pairwise(timeline):
        assert a.end <= b.start, "sorted and non-overlapping"
    positive = [t for t in raw if t.end > t.start]
    if positive:
        # Every piece is covered by its own speaker's input turns...
        for piece in timeline:
            assert piece.end > piece.start
            own = [
                (max(t.start, piece.start), min(t.end, piece.end))
                for t in positive
                if t.speaker == piece.speaker
            ]
            assert _union_length(own) == pytest.approx(piece.end - piece.start, abs=1e-9)
        # ...and the pieces cover exactly the union of the input turns.
        covered = sum(p.end - p.start for p in timeline)
        assert covered == pytest.approx(
            _union_length([(t.start, t.end) for t in positive]), abs=1e-9
        )
    assert all(label for label in assign_speakers(words, raw))


def test_most_overlap_wins_and_is_summed_per_speaker():
    turns = [T("A", 0, 1), T("B", 1, 1.5), T("A", 1.5, 2), T("C", 2, 2.8)]
    # A: 0.4 + 0.5 = 0.9 > C: 0.8 > B: 0.5, although C is the single longest overlap.
    assert assign_speakers([(0.6, 2.8)], turns) == ["A"]
    assert assign_speakers([(1.9, 2.5)], turns) == ["C"]


def test_gap_words_go_to_nearest_turn_and_ties_to_the_earlier():
    turns = [T("A", 0, 1), T("B", 3, 4)]
    assert assign_speakers([(1.2, 1.4), (2.5, 2.8), (1.9, 2.1), (5, 6), (-0.0, 0.0)], turns) == [
        "A",
        "B",
        "A",
        "B",
        "A",
    ]


def test_zero_length_word_inside_a_turn_belongs_to_it():
    turns = [T("A", 0, 1), T("B", 1, 2), T("C", 2.5, 3)]
    assert assign_speakers([(1.5, 1.5), (1.0, 1.0), (2.6, 2.6)], turns) == ["B", "A", "C"]


def test_overlap_goes_to_the_shortest_turn():
    timeline = exclusive_turns([T("A", 0, 10), T("B", 4, 5)])
    assert timeline == [T("A", 0, 4), T("B", 4, 5), T("A", 5, 10)]


def test_only_zero_length_turns_still_give_every_word_a_speaker():
    assert assign_speakers([(0, 1), (5, 6)], [T("A", 2, 2), T("B", 4, 4)]) == ["A", "B"]


@pytest.mark.parametrize(
    ("turn", "needle"),
    [(T("A", 3, 2), "ends at 2.000 s, before it starts"), (T(" ", 0, 1), "no speaker label")],
)
def test_broken_turns_are_refused_with_a_sentence(turn, needle):
    with pytest.raises(InvalidInput, match=needle):
        merge([Segment(0, 0, 1, "oi", (W(0, 1, "oi"),))], [T("A", 0, 1), turn])


@pytest.mark.timeout(60)
def test_attribution_scales_as_a_sweep_not_words_times_turns():
    # 30k words × 30k turns would be 9e8 overlap checks for a W×T scan (minutes in Python);
    # the bisect sweep needs well under a second. The timeout makes a quadratic regression fail.
    n = 30_000
    turns = [T(SPEAKERS[i % 3], i * 1.0, i * 1.0 + 0.9) for i in range(n)]
    words = [(i * 1.0 + 0.1, i * 1.0 + 0.5) for i in range(n)]
    labels = assign_speakers(words, turns)
    assert labels[:4] == ["A", "B", "C", "A"] and labels[-1] == SPEAKERS[(n - 1) % 3]


def test_speaker_index_needs_turns():
    with pytest.raises(ValueError):
        SpeakerIndex([])


# ---- re-segmentation and labels -------------------------------------------------------------

_WORDS = [
    "olá",
    "você",
    "ação",
    "coração",
    "não",
    "é",
    "São",
    "Paulo",
    "amanhã",
    "até",
    "pé",
    "Sr.",
    "bem?",
    "sim!",
    "então…",
    "fim.",
    "vovó,",
    '"certo."',
]


@st.composite
def transcripts(draw) -> list[Segment]:
    segments, t = [], 0.0
    for sid in range(draw(st.integers(0, 4))):
        words = []
        for _ in range(draw(st.integers(0, 12))):
            t += draw(st.integers(0, 150)) / 100
            dur = draw(st.integers(1, 120)) / 100
            words.append(W(t, t + dur, draw(st.sampled_from(_WORDS))))
            t += dur
        if words:
            segments.append(Segment(sid, words[0].start, words[-1].end, "ignored", tuple(words)))
    return segments


@FAST
@given(segments=transcripts(), turns=st.one_of(st.just([]), exclusive_turn_lists()))
def test_merge_invariants(segments, turns):
    options = MergeOptions()
    result = merge(segments, turns, options)
    words_in = [w.word for s in segments for w in s.words]
    words_out = [w for s in result.segments for w in s.words]
    assert [w.word for w in words_out] == words_in, "every word once, in order"
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    for seg in result.segments:
        assert seg.text == " ".join(w.word for w in seg.words)
        assert unicodedata.is_normalized("NFC", seg.text)
        assert {w.speaker for w in seg.words} == {seg.speaker}, "one speaker per segment"
        assert seg.start == seg.words[0].start and seg.end >= seg.start
        for a, b in zip(seg.words, seg.words[1:]):
            assert not ends_sentence(a.word), "sentence ends close a segment"
            assert b.start - a.end <= options.pause_split_s, "long pauses split"
    if turns:
        assert all(w.speaker for w in words_out)
        appearance = list(dict.fromkeys(w.speaker for w in words_out))
        assert list(result.speakers[: len(appearance)]) == appearance
        assert list(result.speakers) == [f"SPEAKER_{i:02d}" for i in range(len(result.speakers))]
        assert {t.speaker for t in result.turns} <= set(result.speakers)
    else:
        assert result.speakers == () and all(s.speaker == "" for s in result.segments)
    assert merge(segments, turns, options) == result, "deterministic"


def test_segments_split_on_sentence_end_pause_and_speaker_but_not_abbreviations():
    words = (
        W(0, 0.3, "O"),
        W(0.3, 0.6, "Sr."),
        W(0.6, 1, "Silva"),
        W(1, 1.4, "chegou."),
        W(1.5, 1.9, "Que"),
        W(1.9, 2.2, "bom!"),
        W(2.2, 2.5, "Eu"),
        W(2.5, 2.8, "acho"),
        W(3.8, 4.0, "que"),
        W(5.01, 5.3, "sim"),
        W(5.3, 5.6, "claro"),
    )
    turns = [T("x", 0, 5.4), T("y", 5.4, 6)]
    result = merge([Segment(0, 0, 5.6, "", words)], turns)
    assert [s.text for s in result.segments] == [
        "O Sr. Silva chegou.",
        "Que bom!",
        "Eu acho que",
        "sim",
        "claro",
    ]
    assert [s.speaker for s in result.segments] == ["SPEAKER_00"] * 4 + ["SPEAKER_01"]


def test_labels_follow_first_appearance_and_silent_speakers_come_last():
    words = (W(0, 1, "um"), W(2, 3, "dois"), W(4, 5, "três"))
    turns = [T("zeta", 4, 5), T("alfa", 2, 3), T("beta", 0, 1), T("mudo", 6, 8)]
    result = merge([Segment(0, 0, 5, "", words)], turns)
    assert [s.speaker for s in result.segments] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    assert result.speakers == ("SPEAKER_00", "SPEAKER_01", "SPEAKER_02", "SPEAKER_03")
    assert result.turns[-1] == T("SPEAKER_03", 6, 8)


def test_without_turns_segments_are_well_formed_and_unlabelled():
    decomposed = "coração".replace("ç", "c\u0327").replace("ã", "a\u0303")
    seg = Segment(
        0, 0, 3, "", (W(0, 1, " " + decomposed), W(1, 2, "bate."), W(2, 3, " "), W(2, 3, "Sim"))
    )
    result = merge([seg], [])
    assert [s.text for s in result.segments] == ["coração bate.", "Sim"]
    assert all(s.speaker == "" and all(w.speaker == "" for w in s.words) for s in result.segments)
    assert result.speakers == ()


def test_segments_without_words_are_attributed_whole():
    segs = [
        Segment(0, 0, 2, " Bom  dia ", ()),
        Segment(1, 2, 4, "Tudo bem?", ()),
        Segment(2, 4, 4, "", ()),
    ]
    result = merge(segs, [T("b", 0, 1.5), T("a", 1.5, 4)])
    assert [(s.text, s.speaker, s.words) for s in result.segments] == [
        ("Bom dia", "SPEAKER_00", ()),
        ("Tudo bem?", "SPEAKER_01", ()),
    ]


def test_recogniser_fields_are_kept_on_every_piece():
    seg = Segment(
        7,
        0,
        2,
        "",
        (W(0, 1, "Oi."), W(1, 2, "Tchau.")),
        avg_logprob=-0.3,
        no_speech_prob=0.1,
        compression_ratio=1.2,
    )
    pieces = merge([seg]).segments
    assert len(pieces) == 2
    assert all(
        (p.avg_logprob, p.no_speech_prob, p.compression_ratio) == (-0.3, 0.1, 1.2) for p in pieces
    )
