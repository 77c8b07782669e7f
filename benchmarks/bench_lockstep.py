"""Long-form strategies vs plain faster-whisper on one file: WER, wall and CPU seconds.

    .venv/bin/python benchmarks/bench_lockstep.py FILE.flac [--strategies lockstep,batched,plain]

Each strategy runs in its own child process (so CPU seconds are that process's alone): `plain` is
`WhisperModel.transcribe` (base, int8, 2 threads, beam 5, VAD, word timestamps); the others are
the transcription core (`Transcriber`) with that strategy and the same model settings. The
reference text is FILE with a .txt suffix. Use a file of the validate split (for example
build/corpus-validate/long/validate_*.flac) for figures you quote.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def run_one(strategy: str, path: Path) -> dict:
    import numpy as np
    from faster_whisper import WhisperModel, decode_audio

    from support.metrics import wer

    reference = path.with_suffix(".txt").read_text(encoding="utf-8")
    audio = decode_audio(str(path))
    model = WhisperModel(
        str(REPO / "models" / "whisper-base"), device="cpu", compute_type="int8", cpu_threads=2
    )
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if strategy == "plain":
        segments, _ = model.transcribe(
            audio, language="pt", beam_size=5, word_timestamps=True, vad_filter=True
        )
        text = " ".join(s.text for s in segments)
    else:
        from asr_mesh.services.common.domain import Segment
        from asr_mesh.services.transcription.core import Transcriber, TranscriptionOptions
        from asr_mesh.services.transcription.models import ModelRegistry

        registry = ModelRegistry(REPO / "models", "whisper-base", loader=lambda *a: model)
        pcm = (audio * 32767).astype(np.int16)
        events = Transcriber(registry, "cpu", "int8").transcribe(
            pcm, TranscriptionOptions(strategy=strategy)
        )
        text = " ".join(e.text for e in events if isinstance(e, Segment))
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"strategy": strategy, "wall_s": wall, "cpu_s": cpu, "wer": wer([reference], [text])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("--strategies", default="plain,lockstep,batched")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.audio)))
        return 0
    rows = []
    for strategy in args.strategies.split(","):
        out = subprocess.run(
            [sys.executable, __file__, str(args.audio), "--child", strategy],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    plain = next((r for r in rows if r["strategy"] == "plain"), rows[0])
    print(f"{'strategy':10s} {'WER':>7s} {'wall s':>8s} {'CPU s':>8s} {'wall/plain':>10s}")
    for r in rows:
        print(
            f"{r['strategy']:10s} {r['wer']:7.2%} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
            f"{r['wall_s'] / plain['wall_s']:10.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
