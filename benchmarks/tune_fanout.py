"""Choose the fan-out chunk size: WER of chunked decoding vs decoding the whole file.

    .venv/bin/python benchmarks/tune_fanout.py build/corpus-validate/long/tune_*.flac \
        [--shares 60,120,180] [--out build/tune-fanout.json]

The gateway's fan-out (asr_mesh/services/gateway/fanout.py) cuts a long file at pauses into chunks
of about `share` seconds of speech and has each decoded on its own, by whichever transcription
replica is free; context (the previous text Whisper is conditioned on) restarts at each cut.
This measures what that costs: for each file, the transcription core decodes the whole file
(the single-call path) and then every chunk of the plan separately (exactly what each replica
does with its chunk), for each share; WER against the file's .txt and per-chunk decode seconds
(the input of the wall-time model in docs/fanout.md). Run it on the tune split only; report the
chosen share on the validate split with benchmarks/bench_fanout.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--shares", default="60,120,180")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "tune-fanout.json")
    args = parser.parse_args()

    import numpy as np
    from faster_whisper import WhisperModel, decode_audio
    from rich.console import Console
    from rich.table import Table

    from asr_mesh.services.common.chunking import ChunkPlanner
    from asr_mesh.services.common.domain import SAMPLE_RATE, Segment
    from asr_mesh.services.transcription import longform
    from asr_mesh.services.transcription.core import Transcriber, TranscriptionOptions
    from asr_mesh.services.transcription.models import ModelRegistry
    from support.metrics import wer

    model = WhisperModel(
        str(REPO / "models" / "whisper-base"), device="cpu", compute_type="int8", cpu_threads=2
    )
    registry = ModelRegistry(REPO / "models", "whisper-base", loader=lambda *a: model)
    transcriber = Transcriber(registry, "cpu", "int8")
    options = TranscriptionOptions(temperatures=(0.0,))  # no sampling: differences are the cuts'

    def decode(pcm: np.ndarray) -> tuple[str, float]:
        started = time.perf_counter()
        events = transcriber.transcribe(pcm, options)
        text = " ".join(e.text for e in events if isinstance(e, Segment))
        return text, time.perf_counter() - started

    rows = []
    for path in args.audio:
        reference = path.with_suffix(".txt").read_text(encoding="utf-8")
        pcm = (decode_audio(str(path)) * 32767).astype(np.int16)
        duration = len(pcm) / SAMPLE_RATE
        whole, seconds = decode(pcm)
        rows.append(
            {
                "file": path.name,
                "share": "whole",
                "chunks": 1,
                "wer": wer([reference], [whole]),
                "seconds": seconds,
                "chunk_seconds": [seconds],
                "chunk_audio": [duration],
            }
        )
        speech = longform.speech_ranges(pcm, transcriber._detect_speech)
        for share in (float(s) for s in args.shares.split(",")):
            planner = ChunkPlanner(share)
            chunks = planner.feed(speech) + planner.finish(duration)
            texts, times = [], []
            for a, b in chunks:
                text, took = decode(pcm[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)])
                texts.append(text)
                times.append(took)
            rows.append(
                {
                    "file": path.name,
                    "share": share,
                    "chunks": len(chunks),
                    "wer": wer([reference], [" ".join(texts)]),
                    "seconds": sum(times),
                    "chunk_seconds": times,
                    "chunk_audio": [b - a for a, b in chunks],
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    table = Table(title="chunked vs whole-file decoding (tune split; temperature 0)")
    for column in ("file", "share (s of speech)", "chunks", "WER", "decode s", "longest chunk s"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["file"],
            str(row["share"]),
            str(row["chunks"]),
            f"{100 * row['wer']:.2f}%",
            f"{row['seconds']:.1f}",
            f"{max(row['chunk_seconds']):.1f}",
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
