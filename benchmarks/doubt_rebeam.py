"""Greedy first, beam search only when in doubt: what a closing decode would gain and cost.

    python benchmarks/doubt_rebeam.py [--corpus build/corpus-validate] [--split tune]
        [--ctx 8] [--json out/doubt_rebeam_tune.json] [--thresholds -0.2,-0.3,...]

Each utterance of the split's conversations (cut as `utterance_context.py` cuts them: silero
VAD, pauses of 0.5 s, at most 15 s) is decoded once after `--ctx` seconds of earlier speech
(pauses removed, as `LatencyProfile.context_s` does) in three ways: greedy with the committed
text as prompt (`balanced`'s closing decode), greedy without it, beam 5 without it
(`accurate`'s). Then, for each threshold, the policy "keep the greedy transcript unless its
utterance's segments have a mean `avg_logprob` below the threshold (or it looped), else take
beam 5's" is scored without decoding again: WER (mean over conversations), the share of
utterances decoded twice and the CPU it would have cost. The decodes are saved (`--json`), so
a threshold is chosen on `tune` and the same table read off `validate` afterwards.

Not a streaming run: each utterance is decoded once, at its end, as the closing decode does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import bench_streaming as bench  # noqa: E402
import utterance_context as uc  # noqa: E402

from asr_mesh.services.transcription import streaming as st  # noqa: E402
from support.metrics import wer  # noqa: E402

SR = 16000
WAYS = {"greedy_prompt": (1, True), "greedy": (1, False), "beam5": (5, False)}
LOOP_RATIO = 2.4


def decode_all(items, model, ctx: float) -> list[dict]:
    """Per conversation: its reference and, per utterance, each way's words, the mean
    `avg_logprob` of the utterance's own segments, whether it looped and its CPU seconds."""
    decoders = {
        name: st.WhisperDecoder(model, "pt", beam, context_pad_s=1.0)
        for name, (beam, _) in WAYS.items()
    }
    vad = st.silero_vad()
    out = []
    for item in items:
        audio = np.frombuffer(item.pcm, dtype="<i2").astype(np.float32) / 32768
        ranges = vad(audio)
        spans = uc.utterances(ranges)
        committed: list[tuple[str, float]] = []  # what the beam-5 policy would have said
        utterances = []
        previous_end = 0.0
        for k, (a, b) in enumerate(spans):
            following = spans[k + 1][0] if k + 1 < len(spans) else b + 1.0
            lo = max(0.0, a - ctx)
            clip, to_file, to_heard = uc.heard(audio, ranges, lo, b + 0.3, ctx > 0, 0.1)
            starts_at = to_heard(max(a - 0.1, lo))
            prompt = " ".join(w for w, start in committed if start < lo)[-200:]
            record: dict = {"start": a, "end": b}
            for name, (_, use_prompt) in WAYS.items():
                started = time.process_time()
                segments = decoders[name](clip, prompt if use_prompt else "")
                cpu = time.process_time() - started
                own = [s for s in segments if s.end > starts_at]
                words = [
                    (w.word.strip(), to_file(w.start))
                    for s in segments
                    if s.compression_ratio <= LOOP_RATIO
                    for w in s.words
                    if (previous_end + a) / 2
                    <= to_file((w.start + w.end) / 2)
                    < min(b + 0.5, (b + following) / 2)
                ]
                record[name] = {
                    "words": [w for w, _ in words],
                    "logprob": float(np.mean([s.avg_logprob for s in own])) if own else None,
                    "looped": any(s.compression_ratio > LOOP_RATIO for s in segments),
                    "cpu_s": cpu,
                }
                if name == "beam5":
                    committed.extend(words)
            utterances.append(record)
            previous_end = b
        out.append({"input": item.name, "reference": item.reference, "utterances": utterances})
        print(f"  decoded {item.name}: {len(utterances)} utterances", flush=True)
    return out


def policy(utterance: dict, first: str, threshold: float | None) -> tuple[list[str], bool]:
    """The words the policy keeps for one utterance, and whether it decoded twice."""
    greedy = utterance[first]
    if threshold is None:
        return greedy["words"], False
    doubtful = greedy["logprob"] is None or greedy["logprob"] < threshold or greedy["looped"]
    return (utterance["beam5"]["words"], True) if doubtful else (greedy["words"], False)


def table(decoded: list[dict], thresholds: list[float]) -> list[dict]:
    rows = []
    for first in ("greedy_prompt", "greedy"):
        for threshold in [None, *thresholds]:
            scores, twice, total, cpu = [], 0, 0, 0.0
            for conv in decoded:
                words: list[str] = []
                for u in conv["utterances"]:
                    kept, again = policy(u, first, threshold)
                    words.extend(kept)
                    twice += again
                    total += 1
                    cpu += u[first]["cpu_s"] + (u["beam5"]["cpu_s"] if again else 0.0)
                scores.append(wer([conv["reference"]], [" ".join(words)]))
            rows.append(
                {
                    "first": first,
                    "threshold": threshold,
                    "wer": float(np.mean(scores)),
                    "per_input": scores,
                    "twice": twice / total,
                    "cpu_s": cpu,
                }
            )
    beam = [
        wer([c["reference"]], [" ".join(w for u in c["utterances"] for w in u["beam5"]["words"])])
        for c in decoded
    ]
    beam_cpu = sum(u["beam5"]["cpu_s"] for c in decoded for u in c["utterances"])
    rows.append(
        {
            "first": "beam5",
            "threshold": None,
            "wer": float(np.mean(beam)),
            "per_input": beam,
            "twice": 0.0,
            "cpu_s": beam_cpu,
        }
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "build" / "corpus-validate")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--ctx", type=float, default=8.0)
    parser.add_argument("--json", type=Path, default=None, help="decodes saved / read here")
    parser.add_argument("--thresholds", default="-0.15,-0.2,-0.25,-0.3,-0.35,-0.4,-0.5,-0.6")
    args = parser.parse_args()
    if args.json and args.json.exists():
        decoded = json.loads(args.json.read_text(encoding="utf-8"))
        print(f"decodes read from {args.json}")
    else:
        items = bench.inputs(args.corpus, args.split, 0, Path("/tmp"))
        decoded = decode_all(items, uc.base_model(), args.ctx)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(decoded, ensure_ascii=False, indent=1))
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    print(f"\n{args.split}: {len(decoded)} conversations, context {args.ctx:g} s")
    print(f"{'first decode':<14} {'doubt below':>11} {'WER':>6} {'decoded twice':>13} {'CPU':>6}")
    for row in table(decoded, thresholds):
        t = "never" if row["threshold"] is None else f"{row['threshold']:g}"
        if row["first"] == "beam5":
            t = "(beam 5 only)"
        print(
            f"{row['first']:<14} {t:>11} {100 * row['wer']:5.1f}% {100 * row['twice']:12.0f}% "
            f"{row['cpu_s']:5.0f}s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
