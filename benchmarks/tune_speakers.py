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
build/corpus-validate). Choose on `tune`; report the chosen variant on `validate` once.
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
    from services.diarization.embedding import Windows, estimate_snr_db

    path = CACHE / f"{Path(entry['audio']).stem}.npz"
    if path.exists():
        data = np.load(path)
        windows = Windows(region=data["region"].tolist(), start=data["start"].tolist(),
                          end=data["end"].tolist(), embeddings=list(data["embeddings"]))
        return [tuple(r) for r in data["regions"].tolist()], windows, float(data["snr"]), float(data["duration"])
    from faster_whisper import decode_audio

    audio = decode_audio(str(entry["audio"]), sampling_rate=16_000)
    regions, windows = backend.embed_speech(audio)
    snr = estimate_snr_db(audio, regions)
    duration = len(audio) / 16_000
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, regions=np.asarray(regions), region=np.asarray(windows.region),
             start=np.asarray(windows.start), end=np.asarray(windows.end),
             embeddings=np.stack(windows.embeddings), snr=snr, duration=duration)
    return regions, windows, snr, duration


def parse_variant(text: str):
    """"name=a.b=1,c=2" → (name, {"a.b": 1.0, "c": 2.0})."""
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, action="append")
    parser.add_argument("--split", action="append", default=[])
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--extension", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="summary lines only")
    args = parser.parse_args()

    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    from services.diarization.embedding import EmbeddingClusteringBackend

    corpora = args.corpus or [REPO / "build" / "corpus-validate"]
    todo = conversations(corpora, args.split or ["tune"])
    backend = EmbeddingClusteringBackend(torch_threads=args.threads)
    variants = [("default", {})] + [parse_variant(v) for v in args.variant]
    for split, entries in todo.items():
        data = [(e, cached_windows(backend, e)) for e in entries]
        refs = [next(iter(load_rttm(str(e["rttm"])).values())) for e in entries]
        print(f"\n## {split}: {len(entries)} conversations; true counts "
              + " ".join(str(e["speakers"]) for e in entries))
        for name, overrides in variants:
            opts = options_with(backend.options, {"turn_extension": args.extension, **overrides})
            variant = EmbeddingClusteringBackend(backend.embedder, opts)
            metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
            found = []
            for (_entry, (regions, windows, snr, duration)), ref in zip(data, refs):
                labels, runs = variant.label_windows(regions, windows, snr, duration, 1, 10)
                hyp = Annotation()
                for i, (label, start, end) in enumerate(runs):
                    hyp[Segment(start, end), f"t{i}"] = int(label)
                metric(ref, hyp)
                found.append(len({r[0] for r in runs}))
            exact = sum(f == e["speakers"] for f, e in zip(found, entries))
            marks = " ".join(f"{f}" + ("" if f == e["speakers"] else "!") for f, e in zip(found, entries))
            print(f"{name:28s} exact {exact:2d}/{len(entries)}  DER {100 * abs(metric):5.1f}%  | {marks}")


if __name__ == "__main__":
    main()
