#!/usr/bin/env python
"""Speaker-count variants of the default diarization backend on cached window embeddings.

    PYANNOTE_METRICS_ENABLED=false .venv/bin/python benchmarks/tune_speakers.py \
        [--split tune] [--variant NAME=field=value,...] [--extension 0]

The models' part (voice activity + one GE2E embedding per speech window) runs once per
conversation and is cached under build/dia-embeddings/ (`EmbeddingClusteringBackend.embed_speech`);
each variant then reruns only `label_windows` (clustering, voting, smoothing), so dozens of
variants cost seconds. A variant is a name and `ClusteringOptions` / `EmbeddingBackendOptions`
overrides, e.g. `--variant merge=clustering.merge_similarity=0.8`. Prints, per split, the
speakers found per conversation and, per variant, exact-count rate and pooled DER (collar 0.25,
overlap scored; turns widened by `--extension` seconds, 0 for the speech-only references of
build/corpus-validate) with its bootstrap 95% interval over conversations, and the exact-count
rate with its Wilson 95% interval. Choose on `tune`; report the chosen variant on `validate` once.

`--oracle` adds two diagnostic rows that use the truth (never a candidate default): "oracle
count" clusters with min = max = the true count, so its DER is what a perfect count estimate
would give with these embeddings; "oracle windows" labels every window with the reference
speaker it overlaps most, so its DER is the floor of the voting and smoothing alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen")]

from benchmarks.bench_speakers import conversations  # noqa: E402

CACHE = REPO / "build" / "dia-embeddings"


def cached_windows(backend, entry: dict):
    """(regions, Windows, snr, duration) of one conversation, from the cache or computed."""
    from asr_mesh.services.diarization.embedding import Windows, estimate_snr_db

    path = CACHE / f"{Path(entry['audio']).stem}.npz"
    if path.exists():
        data = np.load(path)
        windows = Windows(
            region=data["region"].tolist(),
            start=data["start"].tolist(),
            end=data["end"].tolist(),
            embeddings=list(data["embeddings"]),
        )
        return (
            [tuple(r) for r in data["regions"].tolist()],
            windows,
            float(data["snr"]),
            float(data["duration"]),
        )
    from faster_whisper import decode_audio

    audio = decode_audio(str(entry["audio"]), sampling_rate=16_000)
    regions, windows = backend.embed_speech(audio)
    snr = estimate_snr_db(audio, regions)
    duration = len(audio) / 16_000
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        regions=np.asarray(regions),
        region=np.asarray(windows.region),
        start=np.asarray(windows.start),
        end=np.asarray(windows.end),
        embeddings=np.stack(windows.embeddings),
        snr=snr,
        duration=duration,
    )
    return regions, windows, snr, duration


def window_truth(starts, ends, reference) -> np.ndarray:
    """Per window, the index (in sorted label order) of the reference speaker it overlaps most;
    -1 where it overlaps no reference speech. `reference` is a pyannote Annotation."""
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    labels = sorted(reference.labels())
    overlap = np.zeros((len(starts), len(labels)))
    for segment, _track, label in reference.itertracks(yield_label=True):
        overlap[:, labels.index(label)] += np.clip(
            np.minimum(ends, segment.end) - np.maximum(starts, segment.start), 0, None
        )
    if not labels:
        return np.full(len(starts), -1, dtype=np.int64)
    return np.where(overlap.max(axis=1) > 0, overlap.argmax(axis=1), -1).astype(np.int64)


def pooled_interval(
    errors, totals, rounds: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Pooled error rate sum(errors)/sum(totals) and its bootstrap 95% interval, resampling
    conversations (the unit that varies: a few hard mixes dominate the pooled DER)."""
    err, tot = np.asarray(errors, float), np.asarray(totals, float)
    rate = float(err.sum() / max(tot.sum(), 1e-12))
    if len(err) == 0:
        return rate, rate, rate
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(err), (rounds, len(err)))
    draws = err[idx].sum(axis=1) / np.maximum(tot[idx].sum(axis=1), 1e-12)
    low, high = np.percentile(draws, [2.5, 97.5])
    return rate, float(low), float(high)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def parse_variant(text: str):
    """ "name=a.b=1,c=2" → (name, {"a.b": 1.0, "c": 2.0})."""
    name, _, rest = text.partition("=")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            overrides[key] = value
    return name, overrides


def options_with(base, overrides: dict):
    """A copy of the (nested) frozen options with dotted-path overrides applied."""
    nested: dict[str, dict] = {}
    flat = {}
    for key, value in overrides.items():
        head, _, tail = key.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        flat[head] = options_with(getattr(base, head), sub)
    return dataclasses.replace(base, **flat)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, action="append")
    parser.add_argument("--split", action="append", default=[])
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--extension", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="summary lines only")
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="add the oracle-count and oracle-window rows (diagnostics, use the truth)",
    )
    args = parser.parse_args()

    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    from asr_mesh.services.diarization.embedding import EmbeddingClusteringBackend

    corpora = args.corpus or [REPO / "build" / "corpus-validate"]
    todo = conversations(corpora, args.split or ["tune"])
    backend = EmbeddingClusteringBackend(torch_threads=args.threads)
    variants = [("default", {})] + [parse_variant(v) for v in args.variant]
    for split, entries in todo.items():
        data = [(e, cached_windows(backend, e)) for e in entries]
        refs = [next(iter(load_rttm(str(e["rttm"])).values())) for e in entries]
        print(
            f"\n## {split}: {len(entries)} conversations; true counts "
            + " ".join(str(e["speakers"]) for e in entries)
        )
        rows = [(name, overrides, None) for name, overrides in variants]
        if args.oracle:
            rows += [("oracle count", {}, "count"), ("oracle windows", {}, "windows")]
        for name, overrides, oracle in rows:
            opts = options_with(backend.options, {"turn_extension": args.extension, **overrides})
            variant = EmbeddingClusteringBackend(backend.embedder, opts)
            metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
            found, errors, totals = [], [], []
            for (entry, (regions, windows, snr, duration)), ref in zip(data, refs):
                if oracle == "windows":
                    truth = window_truth(windows.start, windows.end, ref)
                    truth = np.where(truth < 0, 0, truth)
                    labels = np.unique(truth, return_inverse=True)[1]
                    runs = variant.runs_from_labels(regions, windows, labels, duration)
                else:
                    bound = int(entry["speakers"]) if oracle == "count" else None
                    labels, runs = variant.label_windows(
                        regions, windows, snr, duration, bound or 1, bound or 10
                    )
                hyp = Annotation()
                for i, (label, start, end) in enumerate(runs):
                    hyp[Segment(start, end), f"t{i}"] = int(label)
                detail = metric(ref, hyp, detailed=True)
                errors.append(
                    detail["confusion"] + detail["missed detection"] + detail["false alarm"]
                )
                totals.append(detail["total"])
                found.append(len({r[0] for r in runs}))
            exact = sum(f == e["speakers"] for f, e in zip(found, entries))
            low, high = wilson(exact, len(entries))
            der, der_low, der_high = pooled_interval(errors, totals)
            marks = " ".join(
                f"{f}" + ("" if f == e["speakers"] else ("+" if f > e["speakers"] else "-"))
                for f, e in zip(found, entries)
            )
            print(
                f"{name:22s} exact {exact:2d}/{len(entries)} ({100 * low:3.0f}-{100 * high:3.0f}%)"
                f"  DER {100 * der:5.1f}% ({100 * der_low:4.1f}-{100 * der_high:4.1f})"
                + ("" if args.quiet else f"  | {marks}"),
                flush=True,
            )


if __name__ == "__main__":
    main()
