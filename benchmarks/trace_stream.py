"""Replay one recording through a streaming session with the real model, logging every decode.

    python benchmarks/trace_stream.py FILE [--profile balanced[:field=value,...]] [--slowdown 5]
        [--words]
        [--reference "the text said"] [--cost-model 1:0.21,2:0.26,...]

What it is for: finding out why a final came out wrong or late. Each decode is printed with
what it heard (the pieces of earlier speech, then the buffer: absolute start and seconds), the
end of its prompt (and prefix), the CPU seconds it took and the segments it returned
(`--words`: each word's time and probability), then the finals with their latency, and the
WER against `--reference` when given.

Time is virtual, as in `bench_streaming.py --simulate`: audio arrives at real time and a decode
lasts what a cost model says for its length (measured on FILE at the start, or `--cost-model`),
times `--slowdown`, so the same command gives the same timeline. `--slowdown 5` stands for a
machine five times slower, or for audio sent five times faster than real time (how the mesh
tests stream): the buffer then holds several phrases when a decode starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import bench_streaming as bench  # noqa: E402

from asr_mesh.services.common.domain import SAMPLE_RATE  # noqa: E402
from asr_mesh.services.transcription import streaming as st  # noqa: E402
from support.metrics import wer  # noqa: E402


def logged(inner, tag: str, session_ref: list, decoded: list[float], words: bool):
    """`inner`, printing what each call heard and returned."""

    def decode(audio: np.ndarray, prompt: str, prefix: str = ""):
        decoded.append(audio.size / SAMPLE_RATE)
        started = time.process_time()
        segments = inner(audio, prompt, prefix)
        cpu = time.process_time() - started
        layout = session_ref[0].heard_layout() if session_ref else []
        pieces = ", ".join(f"{a:.2f}+{b:.2f}" for a, b in layout)
        print(
            f"  {tag:<7} {audio.size / SAMPLE_RATE:5.2f} s heard [{pieces}] {cpu:.2f} CPU-s "
            f"prompt …{prompt[-40:]!r}" + (f" prefix …{prefix[-60:]!r}" if prefix else "")
        )
        for s in segments:
            print(
                f"      {s.start:6.2f}-{s.end:6.2f} cr {s.compression_ratio:.2f} | {s.text.strip()}"
            )
            if words:
                print(
                    "        "
                    + " ".join(
                        f"{w.word}[{w.start:.2f}-{w.end:.2f} {w.probability:.2f}]" for w in s.words
                    )
                )
        return segments

    return decode


def trace(
    samples: np.ndarray,
    profile: str = "balanced",
    slowdown: float = 1.0,
    cost_model: str = "",
    words: bool = False,
    model_dir: Path = REPO / "models" / "whisper-base",
) -> list[dict]:
    """Replay `samples` and print the decodes and finals; returns `bench.replay`'s records."""
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(model_dir), device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True
    )
    name, fields = bench.parse_variant(profile)
    options, prof = st.resolve_options(st.SessionOptions(profile=name), 3600)
    prof = replace(prof, **fields)
    decoder = st.grid_decoder(model, "pt", prof)
    if cost_model:
        base = bench.parse_cost_model(cost_model)
    else:
        base = bench.decode_cost_model(decoder, SimpleNamespace(pcm=samples.tobytes()))

    def cost(seconds: float) -> float:
        return slowdown * base(seconds)

    ref: list = []
    decoded: list[float] = []
    doubt = st.doubt_decoder(model, "pt", prof)
    session = st.StreamingSession(
        logged(decoder, "interim", ref, decoded, words),
        st.silero_vad(),
        options,
        prof,
        rescue=logged(st.rescue_decoder(model, "pt"), "rescue", ref, decoded, words),
        closing=logged(st.closing_decoder(model, "pt", prof), "closing", ref, decoded, words),
        doubt=logged(doubt, "doubt", ref, decoded, words) if doubt else None,
    )
    ref.append(session)
    records = bench.replay(session, samples, clock=cost, decoded=decoded)
    for r in records:
        if "eou" in r:
            kind = "end of utterance" if r["eou"] else "agreed"
            print(
                f"FINAL {r['start']:6.2f}-{r['end']:6.2f} after {r['made_at'] - r['end']:5.2f} s "
                f"({kind}) | {r['text']}"
            )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument(
        "--profile",
        default=st.DEFAULT_PROFILE,
        help=f"one of {', '.join(st.PROFILES)}, optionally with fields changed: "
        "NAME:field=value,... (as bench_streaming.py --variant)",
    )
    parser.add_argument("--slowdown", type=float, default=1.0, help="decode cost multiplier")
    parser.add_argument("--cost-model", default="", help="'SECONDS:CPU_S,...' (default: measure)")
    parser.add_argument("--words", action="store_true", help="print every word of every decode")
    parser.add_argument("--reference", default="", help="the text said, for a WER")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return 1
    name, fields = bench.parse_variant(args.profile)
    known = set(st.LatencyProfile.__dataclass_fields__)
    if name not in st.PROFILES or not set(fields) <= known:
        print(
            f"error: --profile {args.profile!r}: a profile is one of {', '.join(st.PROFILES)}, "
            f"its fields {', '.join(sorted(known - {'name'}))}",
            file=sys.stderr,
        )
        return 1
    try:
        samples = np.frombuffer(bench.decode(args.file), dtype="<i2")
    except subprocess.CalledProcessError as error:
        said = error.stderr.decode(errors="replace").strip().splitlines() or ["no reason given"]
        print(f"error: ffmpeg could not read {args.file}: {said[-1]}", file=sys.stderr)
        return 1
    if not samples.size:
        print(f"error: no audio in {args.file}", file=sys.stderr)
        return 1
    records = trace(samples, args.profile, args.slowdown, args.cost_model, args.words)
    if args.reference:
        text = " ".join(r["text"] for r in records if "eou" in r)
        print(f"WER {wer([args.reference], [text]):.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
