#!/usr/bin/env python
"""Speaker counts and DER of the default diarization backend, old default vs new, per split.

    PYANNOTE_METRICS_ENABLED=false .venv/bin/python benchmarks/bench_speakers.py \
        [--corpus build/corpus-validate] [--split tune --split validate] [--threads 2] \
        [--plot bench_speakers.png]

For every conversation (`dia` entries of each `--corpus` manifest; an entry without `split` is
put in a split named after its corpus directory) both backends run on the same audio through
the service's core (`Diarizer`), sharing one GE2E encoder:
  before: the previous defaults (fixed 0.30 average-linkage cut, 2 smoothing neighbours, turns
          widened 0.45 s, overlap pass on);
  after:  the current defaults (NME-SC count, overlap pass off).
Prints per split and conversation: true count, found count, DER (pyannote.metrics, collar
0.25 s, overlap scored) and RTF (diarization seconds / audio seconds) of each; then per split
the exact-count rate, pooled DER (errors over all reference speech) and the split's RTF. Saves a
PNG of DER per conversation, before vs after, one panel per split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen")]


def conversations(corpora: list[Path], splits: list[str]) -> dict[str, list[dict]]:
    """split → manifest entries (absolute `audio`, `rttm`), in manifest order."""
    out: dict[str, list[dict]] = {}
    for corpus in corpora:
        manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
        for entry in manifest.get("dia", []):
            split = entry.get("split", corpus.name)
            if splits and split not in splits and "split" in entry:
                continue
            out.setdefault(split, []).append(
                {**entry, "audio": corpus / entry["audio"], "rttm": corpus / entry["rttm"]}
            )
    return out


def backends(threads: int) -> dict[str, object]:
    """{"before": old default, "after": new default}, one shared encoder."""
    from asr_mesh.services.diarization.clustering import ClusteringOptions
    from asr_mesh.services.diarization.embedding import (
        EmbeddingBackendOptions,
        EmbeddingClusteringBackend,
        VoiceEncoderEmbedder,
    )
    from asr_mesh.services.diarization.overlap import OverlapOptions

    embedder = VoiceEncoderEmbedder(threads)
    # The defaults before NME-SC, as they were: fixed cut, 2 smoothing neighbours, no centering
    # of clean audio, turns widened 0.45 s into silence, overlap pass on.
    old = EmbeddingBackendOptions(
        context=2,
        centering=0.0,
        turn_extension=0.45,
        clustering=ClusteringOptions(method="threshold"),
        overlap=OverlapOptions(enabled=True),
    )
    return {
        "before": EmbeddingClusteringBackend(embedder, old),
        "after": EmbeddingClusteringBackend(embedder),
    }


def diarize(backend, audio):
    from asr_mesh.services.diarization.core import DiarizationOptions, DiarizationOutcome, Diarizer

    for event in Diarizer(backend).diarize(audio, DiarizationOptions()):
        if isinstance(event, DiarizationOutcome):
            return event
    raise RuntimeError("no outcome")


def hypothesis(turns):
    from pyannote.core import Annotation, Segment

    hyp = Annotation()
    for turn in turns:
        hyp[Segment(turn.start, turn.end)] = turn.speaker
    return hyp


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.2 * len(results)), squeeze=False)
    for ax, (split, rows) in zip(axes[:, 0], results.items()):
        x = np.arange(len(rows))
        for offset, which, colour in ((-0.2, "before", "tab:gray"), (0.2, "after", "tab:blue")):
            ax.bar(
                x + offset, [100 * r[which]["der"] for r in rows], 0.4, label=which, color=colour
            )
            for i, r in enumerate(rows):
                mark = "" if r[which]["found"] == r["true"] else "✗"
                ax.text(
                    i + offset,
                    100 * r[which]["der"] + 0.5,
                    f"{r[which]['found']}{mark}",
                    ha="center",
                    fontsize=7,
                )
        ax.axhline(5, color="tab:red", lw=0.8, ls="--")
        ax.set_xticks(
            x, [f"{r['name']} ({r['true']})" for r in rows], rotation=30, ha="right", fontsize=7
        )
        ax.set_ylabel("DER %")
        ax.set_title(f"{split}: DER per conversation (label: speakers found; true in brackets)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        action="append",
        help="corpus directory with manifest.json (repeatable; default build/corpus-validate)",
    )
    parser.add_argument(
        "--split",
        action="append",
        default=[],
        help="splits to run (repeatable; default tune and validate)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the encoder")
    parser.add_argument("--plot", type=Path, default=Path("bench_speakers.png"))
    args = parser.parse_args()

    from faster_whisper import decode_audio
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    corpora = args.corpus or [REPO / "build" / "corpus-validate"]
    splits = args.split or ["tune", "validate"]
    todo = conversations(corpora, splits)
    if not todo:
        sys.exit(f"no conversations in {', '.join(map(str, corpora))} (make corpus-validate first)")
    models = backends(args.threads)
    results: dict[str, list[dict]] = {}
    summary = []
    for split in sorted(
        todo, key=lambda s: (s not in splits, splits.index(s) if s in splits else 0, s)
    ):
        print(f"\n## {split}")
        print(
            f"{'conversation':34s} {'true':>4s} | {'before':>6s} {'DER':>7s} {'RTF':>7s} |"
            f" {'after':>6s} {'DER':>7s} {'RTF':>7s}"
        )
        metrics = {w: DiarizationErrorRate(collar=0.25, skip_overlap=False) for w in models}
        seconds = {w: 0.0 for w in models}
        total = 0.0
        rows = results.setdefault(split, [])
        for entry in todo[split]:
            audio = decode_audio(str(entry["audio"]), sampling_rate=16_000)
            [reference] = load_rttm(str(entry["rttm"])).values()
            row = {"name": Path(entry["audio"]).stem, "true": int(entry["speakers"])}
            for which, backend in models.items():
                outcome = diarize(backend, audio)
                der = metrics[which](reference, hypothesis(outcome.exclusive_turns))
                seconds[which] += outcome.processing_seconds
                row[which] = {
                    "found": outcome.speaker_count,
                    "der": der,
                    "rtf": outcome.processing_seconds / outcome.audio_duration,
                }
            total += len(audio) / 16_000
            rows.append(row)
            print(
                f"{row['name']:34s} {row['true']:4d} | "
                + " | ".join(
                    f"{row[w]['found']:6d} {100 * row[w]['der']:6.1f}% {row[w]['rtf']:7.4f}"
                    for w in models
                ),
                flush=True,
            )
        exact = {w: sum(r[w]["found"] == r["true"] for r in rows) for w in models}
        line = f"{split}: {len(rows)} conversations, {total:.0f} s; " + "; ".join(
            f"{w}: exact count {exact[w]}/{len(rows)} ({100 * exact[w] / len(rows):.0f}%), pooled DER "
            f"{100 * abs(metrics[w]):.1f}%, RTF {seconds[w] / total:.4f}"
            for w in models
        )
        print(line)
        summary.append(line)
    print("\n## summary")
    print("\n".join(summary))
    plot(results, args.plot)


if __name__ == "__main__":
    main()
