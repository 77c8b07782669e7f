"""Plain faster-whisper vs the mesh on the validation corpus, tune and validate splits apart.

    .venv/bin/python benchmarks/bench_accuracy.py [--corpus build/corpus-validate]
        [--splits tune,validate] [--parts asr,long,dia] [--mesh-variant NAME=OPTIONS ...]
        [--limit N] [--out build/bench-accuracy]
    .venv/bin/python benchmarks/bench_accuracy.py --report RESULTS.json [...]   # tables again

`make bench-accuracy` runs it on `make corpus-validate`'s output. Defaults may be chosen on the
tune split only; the validate split is reported, never tuned on (the README quotes it alone).

Plain faster-whisper runs as a user would call it: `WhisperModel(base, int8)` and
`transcribe(file, language="pt", beam_size=5, vad_filter=True, word_timestamps=True)`, default
temperature fallback. The mesh runs as separate processes (`LocalMesh`), called through the SDK
exactly like `asr transcribe`, warm (model loading excluded on both sides). Variants of the mesh
(`--mesh-variant noloud=loudness_normalization=false`) run in the same pass, so a default can be
chosen on tune with everything else equal.

Prints, per split: clips WER with a bootstrap 95% interval over utterances and the paired
interval of mesh − plain; long-form WER, seconds and time ratio; DER (collar 0.25 s, overlap
scored) and exact-speaker-count rate on conversations; invented segments (text with no truth
speech within 0.5 s, or improbable words squeezed into milliseconds). Saves results.json and a
PNG of WER and DER per file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from support.metrics import normalize  # noqa: E402

BOOTSTRAP_ROUNDS = 2000


@dataclass
class Words:
    """One file's hypothesis: text and timed words (start, end, probability)."""

    text: str
    segments: list[tuple[float, float, list[tuple[float, float, float]]]] = field(
        default_factory=list
    )
    seconds: float = 0.0


def errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) after the project's normalisation."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp or "")
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


def bootstrap(
    pairs: list[tuple[int, int]], other: list[tuple[int, int]] | None = None, seed: int = 0
) -> tuple[float, float, float]:
    """Corpus WER and its bootstrap 95% interval over utterances; with `other`, of the paired
    difference WER(pairs) − WER(other) on the same resampled utterances."""
    rng = np.random.default_rng(seed)
    err = np.array([e for e, _ in pairs], float)
    n = np.array([k for _, k in pairs], float)
    base = err.sum() / max(n.sum(), 1)
    if other is not None:
        err2 = np.array([e for e, _ in other], float)
        base -= err2.sum() / max(n.sum(), 1)
    draws = []
    for _ in range(BOOTSTRAP_ROUNDS):
        idx = rng.integers(0, len(pairs), len(pairs))
        value = err[idx].sum() / max(n[idx].sum(), 1)
        if other is not None:
            value -= err2[idx].sum() / max(n[idx].sum(), 1)
        draws.append(value)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(base), float(low), float(high)


def invented(words: Words, speech: list[tuple[float, float]] | None) -> int:
    """Segments the service's own invention guards would flag
    (`asr_mesh.services.transcription.guards`): squeezed improbable words, or (with a truth
    `speech`) no word near true speech."""
    from asr_mesh.services.common.domain import Segment, Word
    from asr_mesh.services.transcription import guards

    count = 0
    for start, end, ws in words.segments:
        segment = Segment(0, start, end, "", tuple(Word(s, e, "w", p) for s, e, p in ws))
        count += guards.is_squeezed(segment) or (
            speech is not None and guards.outside_speech(segment, speech)
        )
    return count


def clip_speech(path: Path) -> list[tuple[float, float]]:
    """Clips carry 0.3 s of padding around the voice (corpus generator)."""
    import soundfile as sf

    info = sf.info(str(path))
    return [(0.3, info.duration - 0.3)]


def rttm_speech(path: Path) -> list[tuple[float, float]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            start, dur = float(parts[3]), float(parts[4])
            out.append((start, start + dur))
    return sorted(out)


class Plain:
    """faster-whisper as a user calls it."""

    def __init__(self, threads: int):
        from faster_whisper import WhisperModel

        self.model = WhisperModel(
            str(REPO / "models" / "whisper-base"),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
        )

    def __call__(self, path: Path) -> Words:
        started = time.perf_counter()
        segments, _ = self.model.transcribe(
            str(path), language="pt", beam_size=5, vad_filter=True, word_timestamps=True
        )
        out = Words("")
        for s in segments:
            out.segments.append(
                (s.start, s.end, [(w.start, w.end, w.probability) for w in s.words or []])
            )
            out.text += " " + s.text
        out.seconds = time.perf_counter() - started
        return out


class Mesh:
    """The mesh through the SDK, like `asr transcribe`."""

    def __init__(self, address: str):
        from asr_mesh.client.sdk import GatewayClient

        self.client = GatewayClient(address)

    def __call__(self, path: Path, options) -> tuple[Words, object]:
        started = time.perf_counter()
        result = self.client.transcribe(path, options)
        out = Words("", seconds=time.perf_counter() - started)
        for s in result.segments:
            ws = [
                (
                    w.start_offset.ToTimedelta().total_seconds(),
                    w.end_offset.ToTimedelta().total_seconds(),
                    w.probability,
                )
                for w in s.words
            ]
            out.segments.append(
                (
                    s.start_offset.ToTimedelta().total_seconds(),
                    s.end_offset.ToTimedelta().total_seconds(),
                    ws,
                )
            )
            out.text += " " + s.text
        return out, result


def parse_variant(text: str):
    """NAME=field=value,field=value → (NAME, TranscribeOptions keyword arguments)."""
    name, _, rest = text.partition("=")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        lowered = value.lower()
        kwargs[key] = (
            True
            if lowered in ("true", "on", "1")
            else False
            if lowered in ("false", "off", "0")
            else value
        )
    return name, kwargs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "build" / "corpus-validate")
    parser.add_argument("--splits", default="tune,validate")
    parser.add_argument("--parts", default="asr,long,dia")
    parser.add_argument(
        "--mesh-variant",
        action="append",
        default=[],
        help="NAME=option=value,...: an extra mesh run (TranscribeOptions fields)",
    )
    parser.add_argument("--limit", type=int, default=0, help="at most N files per part and split")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for plain and the mesh")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-accuracy")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        metavar="RESULTS_JSON",
        help="print tables (and plot into --out) from saved results; runs nothing",
    )
    args = parser.parse_args()
    if args.report:
        merged: dict = {}
        for path in args.report:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            merged.setdefault("corpus", loaded["corpus"])
            merged.setdefault("variants", loaded["variants"])
            for split, parts in loaded["splits"].items():
                merged.setdefault("splits", {}).setdefault(split, {}).update(parts)
        report(Console(), merged)
        args.out.mkdir(parents=True, exist_ok=True)
        plot(merged, args.out / "accuracy.png")
        return 0

    from asr_mesh.client.sdk import TranscribeOptions
    from asr_mesh.services.supervisor import LocalMesh

    manifest = json.loads((args.corpus / "manifest.json").read_text(encoding="utf-8"))
    splits, parts = args.splits.split(","), args.parts.split(",")
    variants = [("mesh", {})] + [parse_variant(v) for v in args.mesh_variant]
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"corpus": str(args.corpus), "variants": [n for n, _ in variants], "splits": {}}

    plain = Plain(args.threads)
    env = {"ASR_TRANSCRIPTION_CPU_THREADS": str(args.threads)}
    with (
        tempfile.TemporaryDirectory() as state,
        LocalMesh(state_dir=Path(state), env=env, startup_timeout_s=900) as local,
    ):
        mesh = Mesh(local.gateway_address)
        for split in splits:
            rows = results["splits"].setdefault(split, {})
            for part in parts:
                entries = [e for e in manifest.get(part, []) if e.get("split") == split]
                if args.limit:
                    entries = entries[: args.limit]
                if not entries:
                    continue
                console.print(f"[bold]{split}/{part}[/]: {len(entries)} files")
                rows[part] = run_part(
                    part, entries, args.corpus, plain, mesh, variants, TranscribeOptions
                )
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    report(console, results)
    plot(results, args.out / "accuracy.png")
    console.print(f"saved {args.out / 'results.json'} and {args.out / 'accuracy.png'}")
    return 0


def run_part(part, entries, corpus, plain, mesh, variants, options_type) -> list[dict]:
    rows = []

    def one(entry) -> dict:
        path = corpus / entry["audio"]
        reference = entry.get("text", "")
        if part == "asr":
            speech = clip_speech(path)
        elif part == "dia":
            speech = rttm_speech(corpus / entry["rttm"])
        else:
            speech = None
        row = {
            "file": entry["audio"],
            "ref_words": len(normalize(reference).split()),
            "condition": entry.get("condition", entry.get("description", "")),
        }
        hyp = plain(path)
        row["plain"] = {
            "errors": errors(reference, hyp.text)[0],
            "seconds": hyp.seconds,
            "invented": invented(hyp, speech),
        }
        for name, kwargs in variants:
            diarize = part == "dia"
            opts = options_type(
                diarize=diarize, formats=("json", "rttm") if diarize else ("json",), **kwargs
            )
            words, result = mesh(path, opts)
            out = {
                "errors": errors(reference, words.text)[0],
                "seconds": words.seconds,
                "invented": invented(words, speech),
            }
            if diarize:
                out.update(diarization(result, corpus / entry["rttm"], entry["speakers"]))
            row[name] = out
        return row

    # Plain and the mesh alternate file by file (same load for both); the mesh's own
    # concurrency is not used, so its time is one request's time, like plain's.
    with ThreadPoolExecutor(1) as pool:
        for row in pool.map(one, entries):
            rows.append(row)
    return rows


def diarization(result, rttm: Path, true_speakers: int) -> dict:
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    document = next((d for d in result.documents if d.file_extension == "rttm"), None)
    [reference] = load_rttm(str(rttm)).values()
    with tempfile.NamedTemporaryFile("w", suffix=".rttm", delete=False) as f:
        f.write(document.content if document else "")
        name = f.name
    loaded = load_rttm(name)
    os.unlink(name)
    from pyannote.core import Annotation

    hypothesis = next(iter(loaded.values())) if loaded else Annotation()
    metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
    der = metric(reference, hypothesis, uem=None)
    return {
        "der": float(der),
        "found_speakers": len(result.speakers),
        "true_speakers": true_speakers,
        "speech_s": float(reference.get_timeline().support().duration()),
    }


def report(console: Console, results: dict) -> None:
    variants = results["variants"]
    for split, parts in results["splits"].items():
        table = Table(title=f"{split} split ({results['corpus']})")
        for column in (
            "part",
            "files",
            "system",
            "WER [95% CI]",
            "vs plain [95% CI]",
            "seconds",
            "time ratio",
            "invented",
            "DER",
            "exact count",
        ):
            table.add_column(column, justify="right")
        for part, rows in parts.items():
            plain_pairs = [(r["plain"]["errors"], r["ref_words"]) for r in rows]
            plain_s = sum(r["plain"]["seconds"] for r in rows)
            for system in ["plain", *variants]:
                pairs = [(r[system]["errors"], r["ref_words"]) for r in rows]
                wer, low, high = bootstrap(pairs)
                seconds = sum(r[system]["seconds"] for r in rows)
                diff = (
                    ""
                    if system == "plain"
                    else "{:+.1%} [{:+.1%}, {:+.1%}]".format(*bootstrap(pairs, plain_pairs))
                )
                der = count = ""
                if part == "dia" and system != "plain":
                    speech = sum(r[system]["speech_s"] for r in rows)
                    pooled = sum(r[system]["der"] * r[system]["speech_s"] for r in rows)
                    der = f"{pooled / max(speech, 1e-9):.1%}"
                    exact = sum(
                        r[system]["found_speakers"] == r[system]["true_speakers"] for r in rows
                    )
                    count = f"{exact}/{len(rows)}"
                table.add_row(
                    part,
                    str(len(rows)),
                    system,
                    f"{wer:.1%} [{low:.1%}, {high:.1%}]",
                    diff,
                    f"{seconds:.1f}",
                    f"{seconds / max(plain_s, 1e-9):.2f}x",
                    str(sum(r[system]["invented"] for r in rows)),
                    der,
                    count,
                )
        console.print(table)
        if "asr" in parts:
            by_condition(console, split, parts["asr"], variants)


def by_condition(console: Console, split: str, rows: list[dict], variants: list[str]) -> None:
    """Clips WER per recording condition (clean, noise, telephone, reverberation, quiet)."""
    table = Table(title=f"{split} clips by condition")
    table.add_column("condition")
    table.add_column("clips", justify="right")
    for system in ["plain", *variants]:
        table.add_column(system, justify="right")
    for condition in sorted({r["condition"] for r in rows}):
        group = [r for r in rows if r["condition"] == condition]
        words = max(sum(r["ref_words"] for r in group), 1)
        table.add_row(
            condition,
            str(len(group)),
            *[f"{sum(r[s]['errors'] for r in group) / words:.1%}" for s in ["plain", *variants]],
        )
    console.print(table)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = results["variants"]
    panels = [(split, part) for split, parts in results["splits"].items() for part in parts]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.2 * len(panels)), squeeze=False)
    for ax, (split, part) in zip(axes[:, 0], panels):
        rows = results["splits"][split][part]
        x = np.arange(len(rows))
        systems = ["plain", *variants]
        width = 0.8 / len(systems)
        for k, system in enumerate(systems):
            values = [r[system]["errors"] / max(r["ref_words"], 1) for r in rows]
            ax.bar(x + k * width, values, width, label=f"{system} WER")
        if part == "dia":
            ax2 = ax.twinx()
            for system in variants:
                ax2.plot(x + 0.4, [r[system]["der"] for r in rows], "o", label=f"{system} DER")
            ax2.set_ylabel("DER")
            ax2.legend(loc="upper right", fontsize=7)
        ax.set_title(f"{split} / {part}")
        ax.set_ylabel("WER")
        ax.set_xticks([])
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
