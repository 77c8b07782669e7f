"""Choose the level defaults on the tune split: loudness normalisation and the quiet-speech gain.

    .venv/bin/python benchmarks/tune_level.py [--corpus build/corpus-validate] [--split tune]

For each clip of the split, in one process and the same run: plain faster-whisper on the file
(as a user calls it), faster-whisper on the PCM the preprocess service makes with EBU R128
loudness normalisation (the same ffmpeg filter, `asr_mesh.services.preprocess.ffmpeg.filter_chain`),
and faster-whisper on the PCM after the transcription service's static quiet-speech gain
(`asr_mesh.services.transcription.guards.quiet_gain`; identical to plain where no gain applies).
Prints WER per condition and overall with bootstrap 95% intervals of each option minus plain, and
writes results as JSON lines (one per clip, flushed as it goes) so a partial run can be read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr_mesh.services.preprocess.ffmpeg import filter_chain  # noqa: E402
from asr_mesh.services.transcription import guards  # noqa: E402
from benchmarks.bench_accuracy import bootstrap, errors  # noqa: E402

KWARGS = dict(language="pt", beam_size=5, vad_filter=True, word_timestamps=True)


def pcm(path: Path, loudnorm: bool) -> np.ndarray:
    chain = filter_chain(16_000, loudnorm, -23.0)  # the corpus is 16 kHz, like the service sees it
    out = subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-i",
            str(path),
            *(["-af", chain] if chain else []),
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "s16le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.int16).astype(np.float32) / 32768.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "build" / "corpus-validate")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "tune-level.jsonl")
    parser.add_argument("--report", action="store_true", help="only print from --out")
    args = parser.parse_args()
    if not args.report:
        from faster_whisper import WhisperModel

        model = WhisperModel(
            str(REPO / "models" / "whisper-base"), device="cpu", compute_type="int8", cpu_threads=2
        )

        def text(audio) -> str:
            return " ".join(s.text for s in model.transcribe(audio, **KWARGS)[0])

        manifest = json.loads((args.corpus / "manifest.json").read_text(encoding="utf-8"))
        entries = [e for e in manifest["asr"] if e["split"] == args.split]
        with args.out.open("w", encoding="utf-8") as out:
            for entry in entries:
                path = args.corpus / entry["audio"]
                plain = text(str(path))
                loud = text(pcm(path, True))
                raw = pcm(path, False)
                gain = guards.quiet_gain(raw)
                gained = plain if gain == 1.0 else text(guards.apply_gain(raw, gain))
                row = {
                    "file": entry["audio"],
                    "condition": entry["condition"],
                    "gain_db": float(20 * np.log10(gain)),
                }
                for name, hyp in (("plain", plain), ("loudnorm", loud), ("quiet_gain", gained)):
                    row[name], row["words"] = errors(entry["text"], hyp)
                out.write(json.dumps(row) + "\n")
                out.flush()
    rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    print(f"{len(rows)} clips of {args.split}")
    for condition in sorted({r["condition"] for r in rows}) + ["ALL"]:
        group = [r for r in rows if condition in ("ALL", r["condition"])]
        pairs = {
            k: [(r[k], r["words"]) for r in group] for k in ("plain", "loudnorm", "quiet_gain")
        }
        cells = [f"{bootstrap(pairs['plain'])[0]:.1%}"]
        for k in ("loudnorm", "quiet_gain"):
            d, lo, hi = bootstrap(pairs[k], pairs["plain"])
            cells.append(f"{bootstrap(pairs[k])[0]:.1%} ({d:+.1%} [{lo:+.1%}, {hi:+.1%}])")
        print(
            f"{condition:16s} n={len(group):3d}  plain {cells[0]}  loudnorm {cells[1]}  quiet_gain {cells[2]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
