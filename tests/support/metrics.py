"""Evaluation helpers shared by benchmarks and tests (the measuring rules: docs/benchmarks.md).

WER: lower case, NFC, numbers spelled out in PT-BR (num2words), "%" → "por cento",
punctuation dropped; corpus-level with jiwer.
"""

from __future__ import annotations

import re
import unicodedata

import jiwer
from num2words import num2words

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower().replace("%", " por cento")

    def spell(match: re.Match) -> str:
        raw = match.group(0)
        if re.fullmatch(r"\d{1,3}(\.\d{3})+", raw):  # 1.250 → thousands separator in PT-BR
            raw = raw.replace(".", "")
        raw = raw.replace(",", ".")
        try:
            value = float(raw) if "." in raw else int(raw)
            return " " + num2words(value, lang="pt_BR") + " "
        except (ValueError, OverflowError):
            return raw

    text = _NUMBER.sub(spell, text)
    text = _PUNCT.sub(" ", text.replace("-", " "))
    return " ".join(text.split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus-level word error rate after normalisation."""
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        return 0.0
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


def error_counts(references: list[str], hypotheses: list[str]) -> dict[str, int]:
    """What `wer` sums, by kind: substitutions, deletions and insertions over the pairs with a
    reference, after normalisation, and the reference's words. Deletions are words the
    hypothesis left out: a phrase that got no transcript at all shows there, not in the rest."""
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]
    counts = {"substitutions": 0, "deletions": 0, "insertions": 0, "words": 0}
    if not pairs:
        return counts
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    counts["substitutions"] = out.substitutions
    counts["deletions"] = out.deletions
    counts["insertions"] = out.insertions
    counts["words"] = sum(len(r.split()) for r, _ in pairs)
    return counts


def boundary_deletions(reference: str, pieces: list[str]) -> list[str]:
    """The reference words that `pieces` (a stream's finals, in order) leave out where one final
    ends and the next begins, or before the first and after the last: the words a stream loses
    at its commit boundaries, as against inside a final. Same normalisation as `wer`."""
    ref = normalize(reference).split()
    hyp: list[str] = []
    owner: list[int] = []  # which piece each hypothesis word came from
    for k, piece in enumerate(pieces):
        words = normalize(piece).split()
        hyp += words
        owner += [k] * len(words)
    if not ref or not hyp:
        return ref
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    lost: list[str] = []
    for chunk in out.alignments[0]:
        if chunk.type != "delete":
            continue
        at = chunk.hyp_start_idx  # the gap before hypothesis word `at`
        before = owner[at - 1] if at > 0 else None
        after = owner[at] if at < len(owner) else None
        if before != after:
            lost += ref[chunk.ref_start_idx : chunk.ref_end_idx]
    return lost
