#!/usr/bin/env python
"""Experiments behind docs/benchmarks/speakers.md that no option of the backend expresses.

    PYANNOTE_METRICS_ENABLED=false .venv/bin/python benchmarks/speaker_experiments.py \
        [--corpus build/corpus-validate --corpus build/dia-tune-extra] [--split tune]

On the cached window embeddings of `benchmarks/tune_speakers.py` (build/dia-embeddings), tune
split only, each row printed as exact count and pooled DER (collar 0.25, turns not widened):
  * LDA: a 64-dim linear discriminant projection of the GE2E windows, learned from the truth of
    other tune conversations (4 folds, and across groups: the 11 build/corpus-validate tune
    conversations vs the 33 of build/dia-tune-extra), then the default count (NME-SC) and
    smoothing. Learns the project's synthetic voices; never a candidate default, it answers
    "would better embeddings help".
  * per-conversation whitening: within-speaker scatter estimated without labels from windows
    1.6 s apart in one speech region, generalised eigenvectors against the total scatter.
Both also with the true count (min = max = truth), which isolates the partition from the count.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "benchmarks")]

from tune_speakers import cached_windows, pooled_interval, window_truth  # noqa: E402

from benchmarks.bench_speakers import conversations  # noqa: E402


def lda(features: list[np.ndarray], labels: list[np.ndarray], dim: int, shrink: float):
    """(mean, projection) of the classes (conversation, speaker) with shrunk within-scatter."""
    from scipy.linalg import eigh

    x = np.concatenate(features)
    y = np.concatenate([lab + 1000 * i for i, lab in enumerate(labels)])
    mu = x.mean(axis=0)
    within, between = np.zeros((x.shape[1],) * 2), np.zeros((x.shape[1],) * 2)
    for cls in np.unique(y):
        part = x[y == cls]
        centre = part.mean(axis=0)
        within += (part - centre).T @ (part - centre)
        between += len(part) * np.outer(centre - mu, centre - mu)
    within = (1 - shrink) * within / len(x) + shrink * np.trace(within / len(x)) / len(
        within
    ) * np.eye(len(within))
    _, vectors = eigh(between / len(x), within)
    return mu, vectors[:, ::-1][:, :dim]


def whiten_unsupervised(x: np.ndarray, region: np.ndarray, dim: int, shrink: float) -> np.ndarray:
    """Project on the directions where total scatter most exceeds the scatter between windows
    4 hops (1.6 s) apart in one region (mostly one speaker): LDA without labels."""
    from scipy.linalg import eigh

    a = np.arange(len(x) - 4)
    a = a[region[a] == region[a + 4]]
    diff = x[a + 4] - x[a]
    within = diff.T @ diff / (2 * max(len(diff), 1))
    within = (1 - shrink) * within + shrink * np.trace(within) / len(within) * np.eye(len(within))
    _, vectors = eigh(np.cov((x - x.mean(axis=0)).T), within)
    return (x - x.mean(axis=0)) @ vectors[:, ::-1][:, :dim]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, action="append")
    parser.add_argument("--split", default="tune")
    args = parser.parse_args()

    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    from asr_mesh.services.diarization.clustering import (
        cluster_embeddings,
        normalize,
        smooth_embeddings,
    )
    from asr_mesh.services.diarization.embedding import (
        EmbeddingBackendOptions,
        EmbeddingClusteringBackend,
    )

    corpora = args.corpus or [REPO / "build" / "corpus-validate", REPO / "build" / "dia-tune-extra"]
    entries = conversations(corpora, [args.split])[args.split]
    backend = EmbeddingClusteringBackend(
        torch_threads=1, options=EmbeddingBackendOptions(turn_extension=0.0)
    )
    opts = backend.options
    data = []
    for entry in entries:
        regions, windows, snr, duration = cached_windows(backend, entry)
        ref = next(iter(load_rttm(str(entry["rttm"])).values()))
        data.append(
            dict(
                entry=entry,
                regions=regions,
                windows=windows,
                duration=duration,
                ref=ref,
                snr=snr,
                x=normalize(np.stack(windows.embeddings)),
                region=np.asarray(windows.region),
                truth=window_truth(windows.start, windows.end, ref),
            )
        )

    def score(
        name: str,
        features: dict[int, np.ndarray] | None,
        true_count: bool,
        subset: list[int] | None = None,
    ) -> None:
        """One row over the conversations keyed in `features`; None: the default backend on
        `subset` (all when None)."""
        metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
        errors, totals, exact = [], [], 0
        todo = list(features) if features is not None else (subset or list(range(len(data))))
        for i in todo:
            c = data[i]
            k = int(c["entry"]["speakers"])
            low, high = (k, k) if true_count else (1, 10)
            if features is None:
                _, runs = backend.label_windows(
                    c["regions"], c["windows"], c["snr"], c["duration"], low, high
                )
            else:
                x = smooth_embeddings(features[i], c["region"], opts.context)
                labels = cluster_embeddings(
                    x, low, high, opts.clustering, groups=c["region"], radius=2 * opts.context + 4
                )
                runs = backend.runs_from_labels(c["regions"], c["windows"], labels, c["duration"])
            hyp = Annotation()
            for j, (label, start, end) in enumerate(runs):
                hyp[Segment(start, end), f"t{j}"] = int(label)
            detail = metric(c["ref"], hyp, detailed=True)
            errors.append(detail["confusion"] + detail["missed detection"] + detail["false alarm"])
            totals.append(detail["total"])
            exact += len({r[0] for r in runs}) == k
        der, low, high = pooled_interval(errors, totals)
        print(
            f"{name:58s} exact {exact:2d}/{len(errors)}  DER {100 * der:5.1f}% ({100 * low:4.1f}-{100 * high:4.1f})",
            flush=True,
        )

    def lda_features(train: list[int], test: list[int]) -> dict[int, np.ndarray]:
        pure = [data[i]["truth"] >= 0 for i in train]
        mu, w = lda(
            [data[i]["x"][p] for i, p in zip(train, pure)],
            [data[i]["truth"][p] for i, p in zip(train, pure)],
            64,
            0.1,
        )
        return {i: normalize((data[i]["x"] - mu) @ w) for i in test}

    everything = list(range(len(data)))
    folds: dict[int, np.ndarray] = {}
    for f in range(4):
        folds.update(
            lda_features(
                [i for i in everything if i % 4 != f], [i for i in everything if i % 4 == f]
            )
        )
    groups = {
        "corpus-validate": [
            i for i, c in enumerate(data) if "tunex" not in Path(c["entry"]["audio"]).name
        ]
    }
    groups["dia-tune-extra"] = [i for i in everything if i not in groups["corpus-validate"]]
    for true_count in (False, True):
        tag = "true count" if true_count else "estimated count"
        score(f"default, {tag}", None, true_count)
        score(f"LDA64, 4 folds, {tag}", folds, true_count)
    for name, test in groups.items():
        train = [i for i in everything if i not in test]
        score(
            f"LDA64 learned on the others, tested on {name} ({len(test)})",
            lda_features(train, test),
            False,
        )
        score(f"  default on the same {len(test)}", None, False, test)
    for dim in (16, 64):
        features = {
            i: normalize(whiten_unsupervised(c["x"], c["region"], dim, 0.6))
            for i, c in enumerate(data)
        }
        for true_count in (False, True):
            score(
                f"per-conversation whitening {dim}, {'true' if true_count else 'estimated'} count",
                features,
                true_count,
            )


if __name__ == "__main__":
    main()
