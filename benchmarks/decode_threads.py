"""How fast one streaming decode is with each CPU thread count, and where its time goes.

    python benchmarks/decode_threads.py [--threads 1,2] [--beams 1,5] [--seconds 14] [--repeats 3]

Why: a session's closing decode (`streaming.closing_decoder`) is what a closing final waits
for. `accurate`'s is a beam-5 search over ~14 s (8 s of context and the phrase); this times
exactly that decode (`streaming.WhisperDecoder`, short encoder context, word timestamps) on
clips of a tune conversation, once per thread count of the model instance, greedy and beam,
and splits it into the encoder, the token search (`generate`) and the word alignment; and
what each loaded copy of the model adds to resident memory (the second copy is what
`stream_beam_threads` costs). It
chose `TranscriptionSettings.stream_beam_threads` (benchmarks/README.md). Thread counts are
compared within one run: this machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import bench_streaming as bench  # noqa: E402

from asr_mesh.services.transcription import streaming as st  # noqa: E402


class Timed:
    """A CTranslate2 model whose `encode`, `generate` and `align` calls are timed."""

    def __init__(self, inner, spent: dict[str, float]):
        self._inner, self._spent = inner, spent

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if name not in ("encode", "generate", "align"):
            return attribute

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self._spent[name] = self._spent.get(name, 0.0) + time.perf_counter() - started

        return timed


def rss_mb() -> float:
    """This process's resident memory (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma list of cpu_threads")
    parser.add_argument("--beams", default="1,5", help="comma list of beam sizes")
    parser.add_argument("--seconds", type=float, default=14.0, help="length of each clip")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the clips")
    parser.add_argument("--corpus", type=Path, default=REPO / "build" / "corpus-validate")
    parser.add_argument("--input", default="tune_01", help="the tune conversation to cut")
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    items = [i for i in bench.inputs(args.corpus, "tune", 0, Path("/tmp")) if args.input in i.name]
    if not items:
        parser.error(f"no tune input named like {args.input!r} in {args.corpus}")
    audio = np.frombuffer(items[0].pcm, dtype="<i2").astype(np.float32) / 32768
    n = int(args.seconds * st.SAMPLE_RATE)
    clips = [audio[k : k + n] for k in range(5 * st.SAMPLE_RATE, audio.size - n, n)][:3]
    print(
        f"{len(clips)} clips of {args.seconds:.0f} s from {items[0].name}, {args.repeats} passes, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n"
    )
    print(
        f"{'threads':>7} {'beam':>4} {'decode p50':>10} {'mean':>6} {'encode':>6} "
        f"{'search':>6} {'align':>6}"
    )
    copies = []  # kept loaded, as the service keeps both: each load shows one copy's memory
    for threads in [int(t) for t in args.threads.split(",")]:
        before = rss_mb()
        model = WhisperModel(
            str(REPO / "models" / "whisper-base"),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            local_files_only=True,
        )
        copies.append(model)
        print(f"(a copy with {threads} thread(s) loaded: +{rss_mb() - before:.0f} MB resident)")
        spent: dict[str, float] = {}
        model.model = Timed(model.model, spent)
        for beam in [int(b) for b in args.beams.split(",")]:
            decoder = st.WhisperDecoder(model, "pt", beam, context_pad_s=1.0)
            decoder(clips[0], "")  # first calls are slow
            spent.clear()
            took = []
            for _ in range(args.repeats):
                for clip in clips:
                    started = time.perf_counter()
                    decoder(clip, "")
                    took.append(time.perf_counter() - started)
            share = {k: v / len(took) for k, v in spent.items()}
            print(
                f"{threads:>7} {beam:>4} {np.median(took):>9.2f}s {np.mean(took):>5.2f}s "
                f"{share.get('encode', 0):>5.2f}s {share.get('generate', 0):>5.2f}s "
                f"{share.get('align', 0):>5.2f}s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
