"""Word-level combination of several transcripts of the same speech (ROVER, Fiscus 1997).

Decodes of one phrase heard after different contexts go astray on different words. Instead
of keeping the surer transcript whole (`streaming.confidence`), ROVER aligns them word by word
into slots and keeps, in each slot, the word (or the absence of one) with the best vote:
`vote_weight` × the share of transcripts that said it + (1 − `vote_weight`) × its mean
probability, where saying nothing has probability `null_confidence`.

Hand-written: NIST SCTK's `rover` is a C tool over CTM files, and no maintained Python package
does the alignment with word confidences. Words match when their `word_key`s are equal (case
and punctuation aside); the surface form and timing kept are those of the surest instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asr_mesh.services.common.domain import Word, word_key


@dataclass(frozen=True, slots=True)
class RoverSettings:
    """How slots are voted: see the module docstring."""

    vote_weight: float = 0.5
    null_confidence: float = 0.5


Slot = list[Word | None]
"""One aligned position: what each transcript said there (None: nothing)."""


def align(transcripts: Sequence[Sequence[Word]]) -> list[Slot]:
    """The transcripts aligned into slots, each transcript in turn against the slots so far
    (a word matches a slot if any transcript said it there; a substitution costs 1, as does a
    word only one side has)."""
    slots: list[Slot] = []
    for index, transcript in enumerate(transcripts):
        words = list(transcript)
        if not slots:
            slots = [[w] for w in words]
            continue
        keys = [{word_key(w.word) for w in slot if w is not None} for slot in slots]
        n, m = len(slots), len(words)
        cost = [[0] * (m + 1) for _ in range(n + 1)]
        for i in range(1, n + 1):
            cost[i][0] = i
        for j in range(1, m + 1):
            cost[0][j] = j
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                same = word_key(words[j - 1].word) in keys[i - 1]
                cost[i][j] = min(
                    cost[i - 1][j - 1] + (0 if same else 1),
                    cost[i - 1][j] + 1,
                    cost[i][j - 1] + 1,
                )
        merged: list[Slot] = []
        i, j = n, m
        while i > 0 or j > 0:
            if i > 0 and j > 0:
                same = word_key(words[j - 1].word) in keys[i - 1]
                if cost[i][j] == cost[i - 1][j - 1] + (0 if same else 1):
                    merged.append([*slots[i - 1], words[j - 1]])
                    i, j = i - 1, j - 1
                    continue
            if i > 0 and cost[i][j] == cost[i - 1][j] + 1:
                merged.append([*slots[i - 1], None])
                i -= 1
            else:
                merged.append([*([None] * index), words[j - 1]])
                j -= 1
        slots = merged[::-1]
    return slots


def combine(transcripts: Sequence[Sequence[Word]], settings: RoverSettings) -> list[Word]:
    """The combined transcript: the best-voted word of every slot, in order. Ties go to what the
    earliest transcript said there. Words keep the timing of the surest instance, clamped so
    that times never go back."""
    if not transcripts:
        return []
    count = len(transcripts)
    out: list[Word] = []
    for slot in align(transcripts):
        said: dict[str, list[Word]] = {}
        silent = 0
        for word in slot:
            if word is None:
                silent += 1
            else:
                said.setdefault(word_key(word.word), []).append(word)
        best: tuple[float, int] | None = None
        chosen: list[Word] | None = None
        if silent:
            best = (_vote(silent, settings.null_confidence, count, settings), -_first(slot, None))
        for key, words in said.items():
            mean = sum(w.probability for w in words) / len(words)
            score = (_vote(len(words), mean, count, settings), -_first(slot, key))
            if best is None or score > best:
                best, chosen = score, words
        if chosen is None:
            continue
        surest = max(chosen, key=lambda w: w.probability)
        floor = out[-1].end if out else surest.start
        start = max(surest.start, floor)
        out.append(Word(start, max(surest.end, start), surest.word, surest.probability))
    return out


def _vote(votes: int, confidence: float, count: int, settings: RoverSettings) -> float:
    return settings.vote_weight * votes / count + (1 - settings.vote_weight) * confidence


def _first(slot: Slot, key: str | None) -> int:
    """Index of the first transcript that said `key` in `slot` (None: said nothing)."""
    for index, word in enumerate(slot):
        if (word is None and key is None) or (word is not None and word_key(word.word) == key):
            return index
    return len(slot)
