"""NVIDIA NeMo's Portuguese ITN grammars (`nemo_text_processing`, on pynini) as an ITN rewriter.

The comparator of `bench_itn.py`, not used by the merge service: on the held-out part of
`benchmarks/itn/ptbr_itn.tsv` it scored below the built-in parser
(`asr_mesh/services/merge/itn.py`), and adding it to the built-in one changed nothing (docs/itn.md).
Needs the `itn-bench` extra (pynini's wheel is ~160 MB; no torch).

NeMo rewrites a whole string and returns no spans, so word timings are kept by aligning its output
with its input: the segment is cut at punctuation (a span never crosses a comma or a full stop, as
in the built-in parser), each piece is lower-cased without punctuation and given to NeMo, and
`difflib` aligns NeMo's output words with the input words; every run of input words that NeMo
changed becomes one `Rewrite` (so `itn.normalize_words` gives it the span's first start, last end
and lowest probability, exactly as for the built-in parser). Words NeMo left alone keep their
original spelling and case.

NeMo's written style is not the Brazilian press style of the labelled set ("R$ 1250", "12 %",
"14:15", "02 de janeiro", "esperei 2 h"); `brazilian_style` rewrites its output into that style
(rules fitted on the tune part only). Pure apart from the grammar it loads once per cache dir.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from asr_mesh.services.merge.itn import Rewrite, group_thousands, split_punctuation

log = logging.getLogger(__name__)

_YEAR_BEFORE = {"em", "de", "ano", "desde", "até", "a"}
_TIME_BEFORE = {"às", "à", "as", "a", "das", "pelas", "pela", "até"}
_MONEY = re.compile(r"^(R\$|\$|US\$|€)\s?(\d+)(?:,(\d+))?$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
_INT = re.compile(r"^\d+$")
_SCALE_WORDS = {"milhão", "milhões", "bilhão", "bilhões", "trilhão", "trilhões"}
_PERIODS = {"da tarde": 12, "da noite": 12, "da manhã": 0, "da madrugada": 0}
_lock = threading.Lock()


class NemoUnavailableError(RuntimeError):
    """nemo_text_processing (or pynini) is not installed or cannot build its grammar."""


@lru_cache(maxsize=4)
def load(cache_dir: str | None = None):
    """NeMo's Portuguese InverseNormalizer; the compiled grammar (FAR) is cached in `cache_dir`."""
    try:
        from nemo_text_processing.inverse_text_normalization.inverse_normalize import (
            InverseNormalizer,
        )
    except ImportError as exc:
        raise NemoUnavailableError(
            f"ITN backend 'nemo' needs nemo-text-processing and pynini "
            f"(pip install 'asr-mesh[itn-bench]'): {exc}"
        ) from exc
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    logging.getLogger("NeMo-text-processing").setLevel(logging.WARNING)
    return InverseNormalizer(lang="pt", cache_dir=cache_dir)


def raw(text: str, cache_dir: str | None = None) -> str:
    """NeMo's own output for `text` (no style, no alignment): what the library gives by itself."""
    with _lock:  # pynini objects are not documented as thread-safe
        return load(cache_dir).inverse_normalize(text, verbose=False)


def brazilian_style(text: str, said: Sequence[str], before: str, after: str) -> str | None:
    """NeMo's written form of one span → Brazilian press style; None to keep the spoken words.

    `said`: the span's spoken words; `before`/`after`: the words around it.
    """
    if not any(c.isdigit() for c in text):
        return None  # "quarta feira" → "quarta-feira": not ITN's business
    text = text.replace("kph", "km/h")
    money = _MONEY.match(text)
    if money:
        symbol = {"$": "US$"}.get(money.group(1), money.group(1))
        cents = (money.group(3) or "") + "00"
        return f"{symbol} {group_thousands(int(money.group(2)))},{cents[:2]}"
    text = re.sub(r"^\$ ", "US$ ", text)
    text = re.sub(r"(\d) %$", r"\1%", text)
    clock = _CLOCK.match(text)
    if clock:
        h, m = int(clock.group(1)), clock.group(2)
        return f"{h}h{m}" if m != "00" else f"{h}h"
    duration = re.fullmatch(r"(\d+) (h|min)", text)
    if duration:  # "esperei 2 h", "5 min": durations, not clock times; small counts in words
        return None if int(duration.group(1)) <= 10 else f"{duration.group(1)} {said[-1]}"
    day = re.match(r"^0(\d)( de .*)?$", text)
    if day:
        return ("1º" if day.group(1) == "1" else day.group(1)) + (day.group(2) or "")
    ordinal = re.fullmatch(r"(\d+)([ºª]s?)", text)
    if ordinal and int(ordinal.group(1)) <= 10:
        return None
    text = re.sub(r"^(\d{4,}) ", lambda m: group_thousands(int(m.group(1))) + " ", text)
    if _INT.match(text):
        n = int(text)
        if n <= 10 and after not in _SCALE_WORDS:
            return None  # press style: zero to ten stay in words
        if n >= 1000 and not (1000 <= n <= 2199 and before in _YEAR_BEFORE):
            return group_thousands(n)
    return text


def _pieces(words: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) runs of words with no punctuation between them."""
    out, start = [], 0
    for i, word in enumerate(words):
        lead, _, trail = split_punctuation(word)
        if lead and i > start:
            out.append((start, i))
            start = i
        if trail:
            out.append((start, i + 1))
            start = i + 1
    if start < len(words):
        out.append((start, len(words)))
    return out


def _changed_spans(said: list[str], written: list[str]) -> list[tuple[int, int, int, int]]:
    """Aligned runs NeMo changed: (said start, said end, written start, written end).

    A run of dropped words after a change belongs to it together with the words between them
    ("dois vírgula cinco milhões de reais" → "R$ 2,5 milhões": "milhões" matches in the middle,
    "de reais" is dropped, all of it is one span). Words NeMo added from nothing are ignored.
    """
    spans: list[list[int]] = []
    ops = difflib.SequenceMatcher(a=said, b=written, autojunk=False).get_opcodes()
    for tag, a0, a1, b0, b1 in ops:
        if tag == "equal":
            continue
        if tag == "delete" and spans:
            spans[-1][1], spans[-1][3] = a1, max(spans[-1][3], b0)
        elif a1 > a0:
            spans.append([a0, a1, b0, b1])
    return [tuple(s) for s in spans]


def make_rewriter(cache_dir: str | None = None):
    """An `itn.Rewriter` backed by NeMo (loads the grammar now, so errors show at start-up)."""
    load(cache_dir)

    def rewriter(words: Sequence[str]) -> list[Rewrite]:
        cores = [split_punctuation(w)[1].lower() for w in words]
        out: list[Rewrite] = []
        for start, end in _pieces(words):
            piece = cores[start:end]
            written = raw(" ".join(piece), cache_dir).split()
            for a0, a1, b0, b1 in _changed_spans(piece, written):
                before = piece[a0 - 1] if a0 > 0 else ""
                after = piece[a1] if a1 < len(piece) else ""
                text = (
                    brazilian_style(" ".join(written[b0:b1]), piece[a0:a1], before, after)
                    if b1 > b0
                    else None
                )
                if text is None:
                    continue
                # NeMo leaves "da tarde" after "às 3:10": move the hour, take the words in.
                period = " ".join(piece[a1 : a1 + 2])
                clock = re.fullmatch(r"(\d{1,2})h(\d{2})?", text)
                if clock and period in _PERIODS:
                    h = int(clock.group(1))
                    if _PERIODS[period] and h < 12 and (period == "da tarde" or h >= 6):
                        h += 12
                    text, a1 = f"{h}h{clock.group(2) or ''}", a1 + 2
                out.append(Rewrite(start + a0, start + a1, text))
        return out

    return rewriter


def make_combined_rewriter(cache_dir: str | None = None):
    """The built-in parser first; NeMo's rewrites only where the built-in one wrote nothing."""
    from asr_mesh.services.merge.itn import rewrites as builtin

    nemo = make_rewriter(cache_dir)

    def rewriter(words: Sequence[str]) -> list[Rewrite]:
        ours = builtin(words)
        taken = {k for rw in ours for k in range(rw.start, rw.end)}
        extra = [rw for rw in nemo(words) if not taken & set(range(rw.start, rw.end))]
        return sorted(ours + extra, key=lambda rw: rw.start)

    return rewriter
