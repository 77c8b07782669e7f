"""Choosing between closing decodes: every utterance decoded several ways, then rules that pick one.

    python benchmarks/closing_candidates.py collect [--split tune] [--threads 1]
    python benchmarks/closing_candidates.py report out/closing_candidates_tune.json \
        [--rover] [--combine ACDEGJ --combine ADEGJ:0.5/0.7] [--budget 1.3]

`collect` cuts the conversations of a split into utterances as `utterance_context.py` does and
decodes each one with every candidate below (whisper base, beam and context as named, short
encoder context, only the utterance's own words kept), saving the words with their
probabilities (JSON under out/). `report` then scores rules that keep one candidate per
utterance: each candidate alone, and every pair and triple with the candidate of the highest
mean word log-probability (`streaming.confidence`, the rule of
`LatencyProfile.second_context_s`), of the highest mean word probability, or of the highest
mean segment `avg_logprob`; WER per conversation against the first candidate alone, with a 95%
bootstrap interval over conversations, better/worse counts; and the chosen pair with a margin
(the second candidate kept only if surer by that much). With `--rover`, `--combine` and
`--budget`, candidates combined word by word (`rover.combine`) instead, the last two against
`accurate`'s A+C with the surer kept and with their time on 2 cores. Choose on `tune`, then look at
`validate` once. Where `accurate`'s second closing decode came from (benchmarks/README.md, "Two
closing decodes at once").
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import bench_streaming as bench  # noqa: E402
import utterance_context as uc  # noqa: E402

from asr_mesh.services.common.domain import Word  # noqa: E402
from asr_mesh.services.transcription import rover  # noqa: E402
from asr_mesh.services.transcription import streaming as st  # noqa: E402
from support.metrics import wer  # noqa: E402

CANDIDATES = {
    "A": {"ctx": 8.0, "beam": 5, "prompt": False},  # accurate's closing decode
    "B": {"ctx": 8.0, "beam": 5, "prompt": True},
    "C": {"ctx": 4.0, "beam": 5, "prompt": False},
    "D": {"ctx": 12.0, "beam": 5, "prompt": False},
    "E": {"ctx": 0.0, "beam": 5, "prompt": False},  # the utterance alone
    "F": {"ctx": 8.0, "beam": 1, "prompt": True},  # balanced's closing decode
}
"""Name → context seconds (speech only, pauses removed), beam, committed text as prompt (the
first candidate's words: the prompt a stream of it would have)."""

MORE_CANDIDATES = {
    "G": {"ctx": 2.0, "beam": 5, "prompt": False},
    "H": {"ctx": 0.0, "beam": 1, "prompt": True},  # like a step decode of the phrase
    "I": {"ctx": 4.0, "beam": 1, "prompt": False},
    "J": {"ctx": 6.0, "beam": 5, "prompt": False},
    "K": {"ctx": 0.0, "beam": 1, "prompt": False},
    "L": {"ctx": 8.0, "beam": 1, "prompt": False},
}
"""Cheaper decodes for word-level combination (`collect --names A,G,H,...`; A first, the
prompt's source), collected apart and merged into the same file with `merge`."""

Candidate = list[tuple[str, float]]  # (word, probability)


def collect(split: str, threads: int, out: Path, names: Sequence[str] = tuple(CANDIDATES)) -> None:
    model = uc.base_model(threads)
    items = bench.inputs(REPO / "build" / "corpus-validate", split, 0, Path("/tmp"))
    offline = bench.offline_texts(model, items)
    chosen = {name: {**CANDIDATES, **MORE_CANDIDATES}[name] for name in names}
    decoders = {
        name: st.WhisperDecoder(model, "pt", int(c["beam"]), context_pad_s=1.0)
        for name, c in chosen.items()
    }
    vad = st.silero_vad()
    cpu = dict.fromkeys(chosen, 0.0)
    result = []
    for item in items:
        audio = np.frombuffer(item.pcm, dtype="<i2").astype(np.float32) / 32768
        ranges = vad(audio)
        spans = uc.utterances(ranges)
        first: list[tuple[str, float, float]] = []  # the first candidate's words: the prompt
        utterances, previous_end = [], 0.0
        for k, (a, b) in enumerate(spans):
            following = spans[k + 1][0] if k + 1 < len(spans) else b + 1.0
            found = {}
            for name, c in chosen.items():
                choice = uc.Choices.parse({"squeeze": "1", "prompt": "1" if c["prompt"] else "0"})
                started = time.process_time()
                words, _, _ = uc.decode_utterance(
                    decoders[name], model, audio, ranges, first, (a, b), following,
                    previous_end, c["ctx"], choice,
                )  # fmt: skip
                cpu[name] += time.process_time() - started
                found[name] = [(w, p) for w, _, p in words]
                if name == names[0]:
                    first.extend(words)
            utterances.append({"start": a, "end": b, "candidates": found})
            previous_end = b
        result.append(
            {
                "input": item.name,
                "reference": item.reference,
                "offline": offline[item.name],
                "utterances": utterances,
            }
        )
        print(item.name, {k: round(v) for k, v in cpu.items()}, "CPU-s so far", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": split, "cpu_s": cpu, "items": result}), encoding="utf-8")
    print(f"wrote {out}")


def merge(first: Path, second: Path, out: Path) -> None:
    """One file with the candidates of two collects of the same split (same utterances)."""
    a = json.loads(first.read_text(encoding="utf-8"))
    b = json.loads(second.read_text(encoding="utf-8"))
    for item, other in zip(a["items"], b["items"], strict=True):
        for u, v in zip(item["utterances"], other["utterances"], strict=True):
            if (u["start"], u["end"]) != (v["start"], v["end"]):
                raise SystemExit(f"{item['input']}: the two collects cut different utterances")
            u["candidates"].update(
                {k: c for k, c in v["candidates"].items() if k not in u["candidates"]}
            )
    a["cpu_s"].update({k: c for k, c in b["cpu_s"].items() if k not in a["cpu_s"]})
    out.write_text(json.dumps(a), encoding="utf-8")
    print(f"wrote {out}")


def _words(candidate: Candidate) -> list[Word]:
    return [Word(0.0, 0.0, w, p) for w, p in candidate]


SCORES: dict[str, Callable[[Candidate], float]] = {
    "logprob": lambda c: st.confidence(_words(c)),
    "prob": lambda c: float(np.mean([p for _, p in c])) if c else -1.0,
}


def pick(candidates: dict[str, Candidate], names: Sequence[str], score: str, margin=0.0) -> str:
    """The candidate a rule keeps: the highest `score` among `names`, the first one unless
    another beats it by more than `margin`."""
    rate = SCORES[score]
    best = names[0]
    for name in names[1:]:
        if rate(candidates[name]) > rate(candidates[best]) + (margin if best == names[0] else 0):
            best = name
    return best


def wers(data: dict, names: Sequence[str], score: str = "logprob", margin=0.0) -> np.ndarray:
    """WER per conversation of the transcript the rule builds."""
    out = []
    for item in data["items"]:
        words = []
        for u in item["utterances"]:
            kept = pick(u["candidates"], names, score, margin)
            words += [w for w, _ in u["candidates"][kept]]
        out.append(wer([item["reference"]], [" ".join(words)]))
    return np.array(out)


def rover_wers(data: dict, names: Sequence[str], settings: rover.RoverSettings) -> np.ndarray:
    """WER per conversation of the transcripts `names` combined word by word (ROVER)."""
    out = []
    for item in data["items"]:
        words = []
        for u in item["utterances"]:
            transcripts = [_words(u["candidates"][name]) for name in names]
            words += [w.word for w in rover.combine(transcripts, settings)]
        out.append(wer([item["reference"]], [" ".join(words)]))
    return np.array(out)


ROVER_GRID = [
    rover.RoverSettings(vote, null)
    for vote in (0.0, 0.25, 0.5, 0.75, 1.0)
    for null in (0.3, 0.5, 0.7)
]
"""Vote weights × no-word confidences `report --rover` tries."""


def two_worker_makespan(cpu_s: dict[str, float], names: Sequence[str]) -> float:
    """Seconds the decodes `names` take when a session's two workers share them as evenly as
    they can (the better of every split into two groups): the closing final waits this long
    on 2 cores, against `cpu_s[first]` for one decode."""
    total = sum(cpu_s[name] for name in names)
    best = total
    for size in range(1, len(names)):
        for group in itertools.combinations(names, size):
            one = sum(cpu_s[name] for name in group)
            best = min(best, max(one, total - one))
    return best


def parse_combination(text: str) -> tuple[list[str], rover.RoverSettings]:
    """'ACDEGJ' or 'ADEGJ:0.5/0.7' (vote weight / no-word confidence; default `ROVER_SETTINGS`
    of the stream) → the candidate names and the settings."""
    names, _, numbers = text.partition(":")
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no candidate (e.g. ACDEGJ)")
    if not numbers:
        return list(names), st.ROVER_SETTINGS
    try:
        vote, null = (float(x) for x in numbers.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the vote settings are VOTE/NULL, two numbers (e.g. ADEGJ:0.5/0.7)"
        ) from None
    return list(names), rover.RoverSettings(vote_weight=vote, null_confidence=null)


BUDGET_SETTINGS = [rover.RoverSettings(0.5, 0.5), rover.RoverSettings(0.5, 0.7),
                   rover.RoverSettings(0.75, 0.5)]  # fmt: skip
"""The vote settings `report --budget` tries with each set."""


def combination_rows(
    data: dict, base: np.ndarray, combos: Sequence[tuple[list[str], rover.RoverSettings]]
) -> list[tuple[float, str, rover.RoverSettings, float, np.ndarray]]:
    """(mean WER, name, settings, two-worker time over the first candidate's, paired
    difference against `base`) for each combination, best first."""
    cpu = data["cpu_s"]
    first = list(data["items"][0]["utterances"][0]["candidates"])[0]
    rows = []
    for names, settings in combos:
        got = rover_wers(data, names, settings)
        share = two_worker_makespan(cpu, names) / cpu[first]
        rows.append((float(got.mean()), "+".join(names), settings, share, got - base))
    rows.sort(key=lambda r: r[0])
    return rows


def print_combinations(rows, against: str, top: int) -> None:
    print(f"\n{'combined':<14} {'vote':>5} {'null':>5} {'time':>6} {'WER':>6}  vs {against}")
    for mean, name, settings, share, diff in rows[:top]:
        lo, hi = paired(diff)
        print(
            f"{name:<14} {settings.vote_weight:5.2f} {settings.null_confidence:5.2f} "
            f"{share:5.2f}x {100 * mean:5.1f}%  {100 * diff.mean():+5.1f} "
            f"({100 * lo:+.1f} to {100 * hi:+.1f})  {(diff < 0).sum()}/{(diff > 0).sum()}"
        )


def budget_combinations(data: dict, factor: float) -> list[tuple[list[str], rover.RoverSettings]]:
    """Every set of 3 to 5 candidates whose decodes two workers finish within `factor` times
    the first candidate's CPU, with each of `BUDGET_SETTINGS`."""
    cpu = data["cpu_s"]
    names = list(data["items"][0]["utterances"][0]["candidates"])
    limit = factor * cpu[names[0]]
    return [
        (list(combo), settings)
        for size in (3, 4, 5)
        for combo in itertools.combinations(names, size)
        if two_worker_makespan(cpu, combo) <= limit
        for settings in BUDGET_SETTINGS
    ]


def rover_report(data: dict, base: np.ndarray, top: int) -> None:
    """Every pair to quintuple starting with the first candidate, combined with each of
    `ROVER_GRID` (pairs with its first three), against the first candidate alone."""
    names = list(data["items"][0]["utterances"][0]["candidates"])
    combos = [
        (list(combo), settings)
        for size in (2, 3, 4, 5)
        for combo in itertools.combinations(names, size)
        if combo[0] == names[0]
        for settings in (ROVER_GRID if size > 2 else ROVER_GRID[:3])
    ]
    print_combinations(combination_rows(data, base, combos), f"{names[0]} alone", top)


def paired(diff: np.ndarray, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(draws)]
    return tuple(float(x) for x in np.percentile(means, [2.5, 97.5]))  # type: ignore[return-value]


def report(
    path: Path,
    top: int,
    with_rover: bool = False,
    combine: Sequence[tuple[list[str], rover.RoverSettings]] = (),
    budget: float | None = None,
) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    names = list(data["items"][0]["utterances"][0]["candidates"])
    missing = sorted({"A", "C"} - set(names))
    if missing:
        raise SystemExit(f"{path}: the report measures against A+C, and it lacks {missing}")
    first = names[0]
    base = wers(data, [first])
    plain = np.mean([wer([i["reference"]], [i["offline"]]) for i in data["items"]])
    cpu = {k: round(v) for k, v in data["cpu_s"].items()}
    print(
        f"{data['split']}: plain faster-whisper on the whole files {100 * plain:.1f}%; CPU-s {cpu}"
    )
    rows = []
    for size in (1, 2, 3):
        for combo in itertools.combinations(names, size):
            for score in ["logprob"] if size == 1 else list(SCORES):
                got = wers(data, combo, score)
                rows.append((got.mean(), "+".join(combo), score, got - base))
    rows.sort(key=lambda r: r[0])
    print(f"\n{'rule':<10} {'score':<8} {'WER':>6}  vs {first} alone (95% bootstrap)  better/worse")
    for mean, combo, score, diff in rows[:top] + [r for r in rows[top:] if "+" not in r[1]]:
        lo, hi = paired(diff)
        print(
            f"{combo:<10} {score:<8} {100 * mean:5.1f}%  {100 * diff.mean():+5.1f} "
            f"({100 * lo:+.1f} to {100 * hi:+.1f})  {(diff < 0).sum()}/{(diff > 0).sum()}"
        )
    print("\nthe pair A+C (second_context_s 4 s), the 4 s transcript kept only if surer by:")
    for margin in (0.0, 0.05, 0.1, 0.2, 0.3):
        got = wers(data, ["A", "C"], "logprob", margin)
        diff = got - base
        print(f"  {margin:4.2f}: {100 * got.mean():5.1f}%  {100 * diff.mean():+5.1f}  "
              f"{(diff < 0).sum()}/{(diff > 0).sum()}")  # fmt: skip
    if with_rover:
        rover_report(data, base, top)
    chosen = wers(data, ["A", "C"])  # accurate's two closing decodes, the surer kept
    if combine:
        rows = combination_rows(data, chosen, list(combine))
        print_combinations(rows, "A+C, the surer kept", len(rows))
    if budget is not None:
        rows = combination_rows(data, chosen, budget_combinations(data, budget))
        print(f"\nsets of 3-5 that two workers decode within {budget:.2f}x {names[0]}'s time: "
              f"{len(rows) // len(BUDGET_SETTINGS)}")  # fmt: skip
        print_combinations(rows, "A+C, the surer kept", top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="decode every utterance with every candidate")
    c.add_argument("--split", default="tune")
    c.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the model (1: two collects at once on 2 cores)",
    )
    c.add_argument("--out", type=Path)
    c.add_argument(
        "--names", default=",".join(CANDIDATES), help="candidates, the first the prompt's"
    )
    m = sub.add_parser("merge", help="add the candidates of a second collect to a first")
    m.add_argument("first", type=Path)
    m.add_argument("second", type=Path)
    m.add_argument("out", type=Path)
    r = sub.add_parser("report", help="score the rules on a collected file")
    r.add_argument("path", type=Path)
    r.add_argument("--top", type=int, default=30)
    r.add_argument("--rover", action="store_true", help="also combine candidates word by word")
    r.add_argument(
        "--combine",
        action="append",
        default=[],
        type=parse_combination,
        help="NAMES[:VOTE/NULL], e.g. ACDEGJ or ADEGJ:0.5/0.7: those candidates combined word "
        "by word, against A+C with the surer kept (repeat for several)",
    )
    r.add_argument(
        "--budget",
        type=float,
        help="every set of 3-5 candidates two workers decode within this many times the "
        "first's CPU, combined, against A+C with the surer kept",
    )
    args = parser.parse_args()
    if args.command == "collect":
        out = args.out or REPO / "out" / f"closing_candidates_{args.split}.json"
        collect(args.split, args.threads, out, args.names.split(","))
    elif args.command == "merge":
        merge(args.first, args.second, args.out)
    else:
        report(args.path, args.top, args.rover, args.combine, args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
