"""Overlapped-speech detection for the embedding backend: a second, finer pass of GE2E embeddings.

A 1.6 s clustering window over a backchannel spoken under another voice is hardly less like its
speaker than other windows (see `embedding`), and even perfectly classified such windows would
mark 1.6 s for a 0.7 s backchannel. Short windows (0.8 s every 0.2 s) over the clustered turns
do better: where a second voice joins, a window's similarity to its turn's speaker *drops below
that of the same turn's other windows* and its similarity to another speaker rises above theirs.
The score of a window is that drop plus that rise, each against the median of the windows 0.6-2 s
away in the same turn, so voices that are merely similar (a high similarity everywhere) do not
count; window scores are averaged on a 20 ms grid (Hann-weighted), and cells over `threshold`
become overlap, labelled with the speaker whose similarity rose most.

Precision, recall and cost on the overlap-rich conversations of `make corpus-overlap`:
docs/benchmarks.md. Only windows wholly inside a turn are scored, and the regions found are
secondary tracks (`core.SECONDARY_TRACK_PREFIX`), so exclusive turns and speaker names are the
same with or without this pass. It costs one more encoder pass over the speech in short windows
(hop 0.2 s); the scoring itself is linear in the turns' lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from asr_mesh.services.common.domain import SAMPLE_RATE

GRID = 0.02  # seconds per score cell


@dataclass(frozen=True)
class OverlapOptions:
    """Knobs of the overlap pass (tuned on benchmarks/gen_dia_hard.py --overlap)."""

    enabled: bool = False
    """True: run the second pass. Off by default (ASR_DIARIZATION_DETECT_OVERLAPS): it costs
    about 60% more time and nothing downstream (gateway, merge) reads the overlaps yet."""
    window: float = 0.8
    """Seconds per short window."""
    hop: float = 0.2
    threshold: float = 0.12
    """Drop of own-speaker similarity plus rise of another's, against the turn's context."""
    context_min: float = 0.6
    context_max: float = 2.0
    """A window is compared with the windows of its turn whose centres are this far away (s)."""
    min_context: int = 3
    """Windows with fewer context windows in their turn are not scored."""


def _normalize(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return unit


def window_scores(
    embeddings: np.ndarray,
    centres: np.ndarray,
    turn: np.ndarray,
    labels: np.ndarray,
    options: OverlapOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Per short window: (overlap score, the other speaker most likely joining).

    `turn` is each window's turn index (-1: outside every turn) and `labels` that turn's
    speaker. Centroids are the mean embedding of each speaker's windows. Score 0 where the
    window has too little context or only one speaker exists.
    """
    n = len(embeddings)
    scores, other = np.zeros(n), np.full(n, -1)
    inside = turn >= 0
    k = int(labels[inside].max()) + 1 if inside.any() else 0
    if k < 2:
        return scores, other
    x = _normalize(embeddings)
    centroids = _normalize(
        np.stack(
            [
                x[inside & (labels == c)].mean(axis=0)
                if (inside & (labels == c)).any()
                else np.zeros(x.shape[1])
                for c in range(k)
            ]
        )
    )
    sims = x @ centroids.T
    rows = np.arange(n)
    own_label = np.maximum(labels, 0)
    own = sims[rows, own_label]
    for t in np.unique(turn[inside]):
        members = np.flatnonzero(turn == t)
        members = members[np.argsort(centres[members], kind="stable")]
        times = centres[members]
        # Context = the turn's windows 0.6-2 s before or after: two slices of the sorted
        # centres, so the cost grows with the turn's length, not with the square of the file's.
        for j, i in enumerate(members):
            before = members[
                np.searchsorted(times, times[j] - options.context_max, "left") : np.searchsorted(
                    times, times[j] - options.context_min, "right"
                )
            ]
            after = members[
                np.searchsorted(times, times[j] + options.context_min, "left") : np.searchsorted(
                    times, times[j] + options.context_max, "right"
                )
            ]
            context = np.concatenate([before, after])
            if len(context) < options.min_context:
                continue
            rise = sims[i] - np.median(sims[context], axis=0)  # per speaker
            rise[own_label[i]] = -np.inf
            other[i] = int(np.argmax(rise))
            scores[i] = np.median(own[context]) - own[i] + rise[other[i]]
    return scores, other


def overlap_regions(
    starts: np.ndarray,
    ends: np.ndarray,
    scores: np.ndarray,
    other: np.ndarray,
    turns: Sequence[tuple[int, float, float]],
    threshold: float,
) -> list[tuple[int, float, float]]:
    """Window scores → (other speaker, start, end) overlap regions, each inside one turn.

    Per turn, scores are Hann-weighted averages on a 20 ms grid; a run of cells over `threshold`
    is one region, labelled by the weighted vote of its windows' `other`.
    """
    found: list[tuple[int, float, float]] = []
    for owner, t0, t1 in turns:
        cells = int(np.ceil((t1 - t0) / GRID))
        if cells <= 0:
            continue
        centres = t0 + (np.arange(cells) + 0.5) * GRID
        num, den = np.zeros(cells), np.zeros(cells)
        k = int(max(other.max(initial=0), owner)) + 1
        votes = np.zeros((cells, k))
        # Only windows wholly inside the turn: one straddling a change of speaker mixes two
        # voices without any overlap (on the real cases this loses nothing measurable).
        for w in np.flatnonzero((starts >= t0 - 1e-9) & (ends <= t1 + 1e-9) & (other >= 0)):
            # The window's own cells only: linear in the turn's length, not quadratic.
            lo = max(int(np.floor((starts[w] - t0) / GRID)), 0)
            hi = min(int(np.ceil((ends[w] - t0) / GRID)) + 1, cells)
            pos = (centres[lo:hi] - starts[w]) / max(ends[w] - starts[w], GRID)
            covered = np.flatnonzero((pos >= 0) & (pos <= 1)) + lo
            weight = 0.05 + np.sin(np.pi * pos[covered - lo]) ** 2
            num[covered] += weight * scores[w]
            den[covered] += weight
            votes[covered, other[w]] += weight * max(scores[w], 0.0)
        hot = np.concatenate([[False], num > threshold * np.maximum(den, 1e-12), [False]])
        hot[1:-1] &= den > 0
        edges = np.flatnonzero(np.diff(hot.astype(int)))
        for a, b in zip(edges[::2], edges[1::2]):
            label = int(np.argmax(votes[a:b].sum(axis=0)))
            if label != owner:
                found.append((label, t0 + a * GRID, min(t1, t0 + b * GRID)))
    return found


def detect_overlaps(
    audio: np.ndarray,
    regions: Sequence[tuple[float, float]],
    turns: Sequence[tuple[int, float, float]],
    mel: Callable[[np.ndarray], np.ndarray],
    embed: Callable[[np.ndarray], np.ndarray],
    options: OverlapOptions,
    batch_size: int = 64,
    progress: Callable[[], None] = lambda: None,
) -> list[tuple[int, float, float]]:
    """Embed short windows over the speech `regions`, score them against their `turns`
    ((speaker, start, end), exclusive) and return the overlap regions found."""
    frames, hop = round(options.window * 100), max(1, round(options.hop * 100))
    mels: list[np.ndarray] = []
    starts: list[float] = []
    for start, end in regions:
        spectrum = mel(audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)])
        for offset in range(0, len(spectrum) - frames + 1, hop):
            mels.append(spectrum[offset : offset + frames])
            starts.append(start + offset / 100)
    if not mels:
        return []
    embeddings = []
    for i in range(0, len(mels), batch_size):
        embeddings.append(embed(np.stack(mels[i : i + batch_size])))
        progress()
    begin = np.asarray(starts)
    finish = begin + frames / 100
    centres = (begin + finish) / 2
    turn, labels = np.full(len(begin), -1), np.full(len(begin), -1)
    for index, (label, t0, t1) in enumerate(turns):
        mine = (centres >= t0) & (centres < t1)
        turn[mine], labels[mine] = index, label
    scores, other = window_scores(np.concatenate(embeddings), centres, turn, labels, options)
    return overlap_regions(begin, finish, scores, other, turns, options.threshold)
