"""Mesh end to end vs plain faster-whisper on one long file, measured in the same run.

    .venv/bin/python benchmarks/bench_long.py ../shared/corpus-dev/long/long.flac [--diarize]

Plain faster-whisper runs with the service's settings (base, int8 on CPU, beam 5, VAD on, word
timestamps, same thread count); the mesh time is the whole chain through the gateway (upload,
decode, transcription, merge; diarization in parallel with --diarize), model loading excluded
on both sides. Prints a table with time, real-time factor, WER and the mesh/plain time ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from asr_mesh.client.sdk import GatewayClient, TranscribeOptions  # noqa: E402
from asr_mesh.services.supervisor import LocalMesh  # noqa: E402
from support.metrics import wer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("--diarize", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both (0 = default)")
    args = parser.parse_args()
    reference = args.audio.with_suffix(".txt").read_text(encoding="utf-8")

    from faster_whisper import WhisperModel, decode_audio

    audio_s = len(decode_audio(str(args.audio))) / 16000
    plain = WhisperModel(
        str(REPO / "models" / "whisper-base"),
        device="cpu",
        compute_type="int8",
        cpu_threads=args.threads,
    )
    started = time.perf_counter()
    segments, _ = plain.transcribe(
        str(args.audio), language="pt", beam_size=5, word_timestamps=True, vad_filter=True
    )
    plain_text = " ".join(s.text for s in segments)
    plain_s = time.perf_counter() - started
    del plain

    env = {"ASR_TRANSCRIPTION_CPU_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as state, LocalMesh(state_dir=Path(state), env=env) as mesh:
        with GatewayClient(mesh.gateway_address) as client:
            started = time.perf_counter()
            result = client.transcribe(args.audio, TranscribeOptions(diarize=args.diarize))
            mesh_s = time.perf_counter() - started
    mesh_text = " ".join(s.text for s in result.segments)

    table = Table(title=f"{args.audio.name}: {audio_s:.0f} s of audio")
    for column in ("pipeline", "seconds", "RTF", "WER", "time vs plain"):
        table.add_column(column, justify="right")
    table.add_row(
        "plain faster-whisper",
        f"{plain_s:.1f}",
        f"{plain_s / audio_s:.3f}",
        f"{wer([reference], [plain_text]):.1%}",
        "1.00x",
    )
    label = "mesh (with diarization)" if args.diarize else "mesh"
    table.add_row(
        label,
        f"{mesh_s:.1f}",
        f"{mesh_s / audio_s:.3f}",
        f"{wer([reference], [mesh_text]):.1%}",
        f"{mesh_s / plain_s:.2f}x",
    )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
