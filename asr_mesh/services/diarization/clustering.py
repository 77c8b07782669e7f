"""Speaker clustering of window embeddings and turn smoothing. Pure numpy/scipy, no models.

Count estimation, default (`method="nme-sc"`): normalised maximum eigengap spectral clustering
(NME-SC, Park et al. 2019, as NeMo's speaker clustering does it; written here from the paper's
description). The cosine affinity of the window embeddings is binarised keeping each row's p
nearest neighbours; the p that minimises p / (largest Laplacian eigengap / largest eigenvalue)
is taken, the position of that gap is the speaker count, clipped to the caller's min/max, and
k-means on the first k eigenvectors gives the partition, then a few rounds of nearest-centroid
reassignment (`refine`). It tunes itself per file: nothing is a distance threshold. Two changes
for this backend's windows: overlapping, smoothed windows of one speech region are masked from
each other's neighbour lists (else the graph counts regions), and, optionally, a normalised gap
under `min_gap` means one speaker (a single voice still shows some largest gap).

Why: the previous default (`method="threshold"`, kept), average-linkage cut at a fixed cosine
distance of 0.30 with small clusters dissolved, was tuned on corpus-dev's two conversations and
found the exact count on 2 of 11 conversations of the tune split of build/corpus-validate
(benchmarks/bench_speakers.py), merging similar voices and splitting others. NME-SC alone
over-splits (one voice still shows a largest eigengap; a voice's pitch or tempo change can look
like a second speaker): after it, clusters under `nme_min_fraction` of the windows are dissolved
and speakers whose centroids are closer than `merge_similarity` are merged. Figures, chosen on
tune and reported on validate: docs/benchmarks/speakers.md.

Smoothing (`smooth_embeddings`: each window averaged with its neighbours in its speech region)
lifts same-speaker similarity more than it moves speaker centroids; `center` removes part of
the file's mean embedding (the share background noise adds to every window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage


@dataclass(frozen=True)
class ClusteringOptions:
    """Knobs of the count estimation and turn smoothing."""

    method: str = "nme-sc"
    """"nme-sc": self-tuning spectral count (see `nme_spectral`); "threshold": the fixed
    average-linkage cut at `threshold` (the default before; kept for comparison)."""
    max_pruning: float = 0.15
    """NME-SC: largest share of each row's neighbours kept when binarising the affinity
    (0.15 chosen on the tune split of build/corpus-validate; 0.25 merged a 4-voice talk)."""
    pruning_steps: int = 20
    """NME-SC: how many neighbour counts are tried between 1 and `max_pruning`."""
    min_gap: float = 0.0
    """NME-SC: a largest eigengap under this share of the largest eigenvalue means no group
    structure, i.e. one speaker (when the caller allows one). Off (0) by default: 0.075 made
    single speakers cut from the tune/dev/hard conversations count 1 in 29 of 30 (7 of 30 at
    0), but merged the two voices of benchmarks/gen_dia_hard.py's similar_short and short_turns
    and of tune_08_noisy_babble into one. So, by default, one-speaker audio is over-split."""
    spectral_points: int = 400
    """NME-SC: windows the spectral estimate sees (an even subsample of longer inputs)."""
    threshold: float = 0.30
    """Average-linkage cosine distance above which two groups are different speakers."""
    min_cluster_fraction: float = 0.05
    """A cluster with fewer windows than this share (and `min_cluster_windows`) is not a speaker."""
    min_cluster_windows: int = 3
    max_points: int = 3000
    """Windows clustered directly; more are subsampled evenly and assigned to centroids."""
    refine_iterations: int = 3
    """Rounds of reassigning every window to its nearest speaker centroid after the cut."""
    merge_similarity: float = 0.85
    """NME-SC: after the partition, speakers whose centroids are more similar than this (cosine)
    are merged, closest pair first (0 = off). With `nme_min_fraction`, chosen on 30 tune
    conversations (build/corpus-validate tune + build/dia-tune-extra,
    `benchmarks/tune_speakers.py`); reported on the validate split in
    docs/benchmarks/speakers.md."""
    nme_min_fraction: float = 0.08
    """NME-SC: a speaker with fewer windows than this share of all windows is dissolved into
    the nearest other speaker (0 = off): over-split voices leave small clusters behind."""


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x / np.maximum(norms, 1e-12)
    return out


def _relabel_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    mapping: dict[int, int] = {}
    for value in labels.tolist():
        mapping.setdefault(value, len(mapping))
    return np.array([mapping[v] for v in labels.tolist()], dtype=np.int64)


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return normalize(np.stack([x[labels == c].mean(axis=0) for c in range(k)]))


def _dissolve_small(
    x: np.ndarray, labels: np.ndarray, min_size: int, keep_at_least: int
) -> np.ndarray:
    """Reassign windows of clusters smaller than `min_size` to the nearest large centroid."""
    sizes = np.bincount(labels)
    order = np.argsort(-sizes, kind="stable")
    big = [int(c) for c in order if sizes[c] >= min_size]
    if len(big) < keep_at_least:
        big = [int(c) for c in order[:keep_at_least]]
    if len(big) == len(sizes):
        return labels
    cents = normalize(np.stack([x[labels == c].mean(axis=0) for c in big]))
    nearest = np.argmax(x @ cents.T, axis=1)
    out = labels.copy()
    small = ~np.isin(labels, big)
    out[small] = np.array(big)[nearest[small]]
    return _relabel_by_first_appearance(out)


def cluster_embeddings(
    embeddings: np.ndarray,
    min_speakers: int = 1,
    max_speakers: int = 10,
    options: ClusteringOptions = ClusteringOptions(),
    groups: np.ndarray | None = None,
    radius: int | None = None,
) -> np.ndarray:
    """Label each embedding with a speaker index (0.. by first appearance).

    `groups` (optional, one value per embedding) marks embeddings that share signal, such as
    overlapping windows of one speech region; NME-SC does not count members of one group less
    than `radius` positions apart (any distance when None) as neighbours.

    `min_speakers == max_speakers` forces that exact count (when there are enough windows);
    otherwise the count is estimated and clipped to the bounds. Deterministic.
    """
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x = normalize(np.asarray(embeddings, dtype=np.float64))
    max_k = max(1, min(max_speakers, n))
    min_k = max(1, min(min_speakers, max_k))
    if n == 1 or max_k == 1:
        return np.zeros(n, dtype=np.int64)
    if options.method == "nme-sc":
        mask = None if groups is None else _shared_signal(np.asarray(groups), np.arange(n), radius)
        return _cluster_nme(x, min_k, max_k, options, mask)

    # Bounded memory: linkage needs n² distances, so cluster an even subsample of long inputs.
    if n > options.max_points:
        picked = np.linspace(0, n - 1, options.max_points).round().astype(np.int64)
        sub = cluster_embeddings(x[picked], min_k, max_k, options)
        k = int(sub.max()) + 1
        return _relabel_by_first_appearance(np.argmax(x @ _centroids(x[picked], sub, k).T, axis=1))

    tree = linkage(x, method="average", metric="cosine")
    labels = fcluster(tree, t=options.threshold, criterion="distance") - 1
    min_size = max(options.min_cluster_windows, int(np.ceil(options.min_cluster_fraction * n)))
    labels = _dissolve_small(x, _relabel_by_first_appearance(labels), min_size, keep_at_least=1)
    k = int(labels.max()) + 1
    if k > max_k:
        # Too many: merge the closest speakers (by centroid) rather than re-cut the tree, whose
        # top splits may be a few outlier windows that would take a speaker's place.
        return refine(
            x, _merge_closest(x, labels, max_k), options.refine_iterations, keep_at_least=min_k
        )
    if k < min_k:
        labels = _relabel_by_first_appearance(fcluster(tree, t=min_k, criterion="maxclust") - 1)
        if min_k == max_k or int(labels.max()) + 1 > max_k:
            return refine(x, labels, options.refine_iterations, keep_at_least=min_k)
        labels = _dissolve_small(x, labels, min_size, keep_at_least=min_k)
    return refine(x, labels, options.refine_iterations, keep_at_least=min_k)


SharedSignal = tuple[np.ndarray, np.ndarray, "int | None"]
"""(groups, positions, radius): which pairs of windows may not be neighbours."""


def _shared_signal(groups: np.ndarray, positions: np.ndarray, radius: int | None) -> SharedSignal:
    """(groups, positions, radius) describing which pairs may not be neighbours (see below)."""
    return groups, positions, radius


def _cluster_nme(
    x: np.ndarray, min_k: int, max_k: int, options: ClusteringOptions, mask: SharedSignal | None
) -> np.ndarray:
    """NME-SC count and spectral partition, then centroid refinement on the embeddings."""
    n = len(x)
    if n > options.spectral_points:
        picked = np.linspace(0, n - 1, options.spectral_points).round().astype(np.int64)
        sub = _cluster_nme(
            x[picked],
            min_k,
            max_k,
            options,
            None if mask is None else (mask[0][picked], mask[1][picked], mask[2]),
        )
        k = int(sub.max()) + 1
        centroids = _centroids(x[picked], sub, k)
        labels = _relabel_by_first_appearance(np.argmax(x @ centroids.T, axis=1))
        return refine(x, labels, options.refine_iterations, keep_at_least=min_k)
    k, spectral = nme_spectral(
        x, min_k, max_k, options.max_pruning, options.pruning_steps, mask, options.min_gap
    )
    labels = _relabel_by_first_appearance(kmeans(spectral, k))
    labels = refine(x, labels, options.refine_iterations, keep_at_least=min_k)
    if options.nme_min_fraction > 0:
        min_size = max(1, int(np.ceil(options.nme_min_fraction * n)))
        labels = _dissolve_small(x, labels, min_size, keep_at_least=min_k)
    if options.merge_similarity > 0:
        labels = _merge_above(x, labels, options.merge_similarity, min_k)
    return labels


COUNT_CEILING = 10
"""NME-SC looks for the largest eigengap among this many speakers (or the caller's maximum)."""


def binarise(similarity: np.ndarray, neighbours: int) -> np.ndarray:
    """Keep each row's `neighbours` most similar entries as 1 (others 0), then symmetrise."""
    n = len(similarity)
    keep = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours]
    graph = np.zeros_like(similarity)
    graph[np.repeat(np.arange(n), keep.shape[1]), keep.ravel()] = 1.0
    symmetric: np.ndarray = 0.5 * (graph + graph.T)
    return symmetric


def laplacian(graph: np.ndarray) -> np.ndarray:
    """Unnormalised graph Laplacian D - A."""
    lap: np.ndarray = np.diag(graph.sum(axis=1)) - graph
    return lap


def nme_spectral(
    x: np.ndarray,
    min_k: int,
    max_k: int,
    max_pruning: float,
    steps: int,
    mask: tuple[np.ndarray, np.ndarray, int | None] | None = None,
    min_gap: float = 0.0,
) -> tuple[int, np.ndarray]:
    """Normalised maximum eigengap spectral clustering (Park et al., 2019): count + embedding.

    For each candidate neighbour count p the cosine affinity is binarised (top p per row); the
    largest gap among the Laplacian's smallest eigenvalues, relative to its largest, measures
    how clearly the graph falls apart into groups. The p minimising p / gap is the sparsest
    graph that still separates cleanly; its largest eigengap (within [min_k, max_k]) is the
    speaker count, and its first k eigenvectors the spectral embedding. Returns (k, embedding).
    A normalised largest gap under `min_gap` means there is no group structure: one speaker
    (if `min_k` allows), since a single voice's windows still show some largest gap.

    `mask` = (groups, positions, radius): members of one group (e.g. the speech region of each
    window) whose positions are less than `radius` apart (any distance when None) are never
    each other's neighbours. Overlapping, smoothed windows of one region are near-copies of
    each other; left in, every window's nearest neighbours are its own region's and a sparse
    graph falls apart into regions, not speakers. Masked, neighbours come from elsewhere: other
    regions, or further along one long region (babble noise can make a whole file one region).
    """
    n = len(x)
    similarity = x @ x.T
    if mask is not None:
        groups, positions, radius = mask
        shared = groups[:, None] == groups[None, :]
        if radius is not None:
            shared &= np.abs(positions[:, None] - positions[None, :]) < radius
        similarity[shared & ~np.eye(n, dtype=bool)] = -np.inf
    # The count is estimated freely (up to `COUNT_CEILING` or the caller's maximum) and then
    # clipped to the bounds: with three clear groups and max 2, the answer is 2, not 1.
    top = min(max(max_k, COUNT_CEILING) + 1, n)
    candidates = np.unique(np.linspace(1, max(1, int(max_pruning * n)), steps).round().astype(int))
    best: tuple[float, ...] = (np.inf, int(candidates[-1]))
    for p in candidates.tolist():
        values = np.linalg.eigvalsh(laplacian(binarise(similarity, p)))
        gap = float(np.max(np.diff(values[:top]))) if top > 1 else 0.0
        normalised = gap / max(float(values[-1]), 1e-10)
        ratio = (p / n) / (normalised + 1e-10)
        if ratio < best[0]:
            best = (ratio, p, normalised)
    values, vectors = np.linalg.eigh(laplacian(binarise(similarity, int(best[1]))))
    k = 1 + int(np.argmax(np.diff(values[:top]))) if top > 1 else 1
    if len(best) > 2 and best[2] < min_gap:
        k = 1
    k = min(max(k, min_k), max_k, n)
    return k, vectors[:, :k]


def kmeans(x: np.ndarray, k: int, restarts: int = 10, iterations: int = 100) -> np.ndarray:
    """Deterministic k-means (k-means++ seeding from a fixed seed, best of `restarts`)."""
    n = len(x)
    if k <= 1 or n <= k:
        return np.arange(n) if n <= k else np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    best_labels, best_cost = np.zeros(n, dtype=np.int64), np.inf
    for _ in range(restarts):
        centres = [x[int(rng.integers(n))]]
        for _ in range(1, k):
            d = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
            total = d.sum()
            pick = int(rng.choice(n, p=d / total)) if total > 0 else int(rng.integers(n))
            centres.append(x[pick])
        c = np.asarray(centres)
        for _ in range(iterations):
            labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
            new = np.stack(
                [x[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(k)]
            )
            if np.allclose(new, c):
                break
            c = new
        cost = float(((x - c[labels]) ** 2).sum())
        if cost < best_cost - 1e-12:
            best_labels, best_cost = labels, cost
    return best_labels.astype(np.int64)


def _merge_closest(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Merge the pair of clusters with the most similar centroids until `k` remain."""
    labels = labels.copy()
    while int(labels.max()) + 1 > k:
        cents = _centroids(x, labels, int(labels.max()) + 1)
        sims = cents @ cents.T
        np.fill_diagonal(sims, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        labels[labels == max(a, b)] = min(a, b)
        labels = _relabel_by_first_appearance(labels)
    return labels


def _merge_above(x: np.ndarray, labels: np.ndarray, similarity: float, min_k: int) -> np.ndarray:
    """Merge the closest pair of speakers while their centroid cosine exceeds `similarity`."""
    while int(labels.max()) + 1 > max(min_k, 1):
        cents = _centroids(x, labels, int(labels.max()) + 1)
        sims = cents @ cents.T
        np.fill_diagonal(sims, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        if sims[a, b] < similarity:
            break
        labels = labels.copy()
        labels[labels == max(a, b)] = min(a, b)
        labels = _relabel_by_first_appearance(labels)
    return labels


def smooth_embeddings(x: np.ndarray, groups: np.ndarray, radius: int) -> np.ndarray:
    """Average each embedding with up to `radius` neighbours on each side within its group.

    Windows of one speech region overlap and almost always share a speaker; averaging them
    (as GE2E averages partial utterances) lifts same-speaker similarity more than it moves a
    speaker's centroid, which is what separates similar voices.
    """
    x = normalize(np.asarray(x, dtype=np.float64))
    if radius <= 0 or len(x) < 2:
        return x
    out = np.empty_like(x)
    groups = np.asarray(groups)
    bounds = np.flatnonzero(np.diff(groups)) + 1
    for members in np.split(np.arange(len(x)), bounds):
        cumulative = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x[members], axis=0)])
        lo = np.maximum(np.arange(len(members)) - radius, 0)
        hi = np.minimum(np.arange(len(members)) + radius + 1, len(members))
        out[members] = cumulative[hi] - cumulative[lo]
    return normalize(out)


def center(x: np.ndarray, strength: float) -> np.ndarray:
    """Remove `strength` times the mean embedding, then re-normalise.

    Background noise adds one component shared by every window of a file (in 10-12 dB white
    noise, GE2E centroids of different voices rise from cosine 0.68 to 0.87); taking part of
    the file's mean away restores the between-speaker angles. Not for clean audio: there the
    mean is mostly speaker, and removing it splits voices.
    """
    x = normalize(np.asarray(x, dtype=np.float64))
    if strength <= 0 or len(x) < 2:
        return x
    return normalize(x - strength * x.mean(axis=0))


def refine(x: np.ndarray, labels: np.ndarray, iterations: int, keep_at_least: int) -> np.ndarray:
    """Reassign windows to their nearest centroid (k-means rounds on the sphere).

    Average linkage decides the count well but places windows near a boundary by group
    averages of a tree built bottom-up; a centroid says better which speaker a window is
    closer to. A round that would leave fewer than `keep_at_least` speakers is not taken.
    """
    for _ in range(iterations):
        k = int(labels.max()) + 1
        new = np.argmax(x @ _centroids(x, labels, k).T, axis=1)
        if np.array_equal(new, labels):
            break
        if len(np.unique(new)) < max(keep_at_least, 1):
            break
        labels = _relabel_by_first_appearance(new)
    return labels


def smooth_runs(
    runs: list[tuple[int, float, float]], min_duration: float
) -> list[tuple[int, float, float]]:
    """Absorb runs shorter than `min_duration` into a touching neighbour; join same-label runs.

    `runs` are (label, start, end) in time order; neighbours "touch" when no silence separates
    them. An isolated short run (silence on both sides) is kept: it is all the evidence there is.
    """
    work: list[list[float]] = [list(r) for r in runs]
    changed = True
    while changed:
        changed = False
        merged: list[list[float]] = []
        for run in work:
            if merged and merged[-1][0] == run[0] and abs(merged[-1][2] - run[1]) < 1e-6:
                merged[-1][2] = run[2]
            else:
                merged.append(run)
        work = merged
        # Shortest first, so one pass absorbs the clearest flickers before longer ones.
        for i in sorted(range(len(work)), key=lambda j: (work[j][2] - work[j][1], j)):
            label, start, end = work[i]
            if end - start >= min_duration:
                break
            prev_touch = i > 0 and abs(work[i - 1][2] - start) < 1e-6
            next_touch = i + 1 < len(work) and abs(work[i + 1][1] - end) < 1e-6
            if not (prev_touch or next_touch):
                continue
            if prev_touch and next_touch:
                before, after = work[i - 1], work[i + 1]
                longer = i - 1 if before[2] - before[1] >= after[2] - after[1] else i + 1
            else:
                longer = i - 1 if prev_touch else i + 1
            work[i][0] = work[longer][0]
            changed = True
            break
    return [(int(r[0]), float(r[1]), float(r[2])) for r in work]


def fill_gaps(
    runs: list[tuple[int, float, float]], max_gap: float, extend: float, duration: float
) -> list[tuple[int, float, float]]:
    """Close short pauses within a speaker and widen turns into the silence around them.

    A pause shorter than `max_gap` between two runs of one speaker is joined; every turn edge
    then grows by up to `extend` seconds into silence, never past the middle of a pause, 0 or
    `duration`. Why: voice activity trims the quiet onset and release of each utterance, which
    annotators (and the corpus RTTM) count as part of the turn.
    """
    joined: list[list[float]] = []
    for label, start, end in runs:
        if joined and joined[-1][0] == label and start - joined[-1][2] < max_gap:
            joined[-1][2] = max(joined[-1][2], end)
        else:
            joined.append([label, start, end])
    out = [list(r) for r in joined]
    for i, (_label, start, end) in enumerate(joined):
        left = joined[i - 1][2] if i else None
        right = joined[i + 1][1] if i + 1 < len(joined) else None
        lo = 0.0 if left is None else max(left, (left + start) / 2)
        hi = duration if right is None else min(right, (end + right) / 2)
        out[i][1] = min(start, max(start - extend, lo))
        out[i][2] = max(end, min(end + extend, hi))
    return [(int(r[0]), float(r[1]), float(r[2])) for r in out]
