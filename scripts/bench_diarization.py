#!/usr/bin/env python
"""Diarization benchmark: DER and speaker count on the corpus conversations, RTF on long audio.

    PYANNOTE_METRICS_ENABLED=false .venv/bin/python scripts/bench_diarization.py \
        [--corpus ../shared/corpus-dev] [--threads 2] [--no-long] [--pyannote-dir DIR]

Prints one table: file, true speakers, found speakers, DER (collar 0.25 s, overlap scored), RTF.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen")]


def load_rttm(path: Path):
    """RTTM file → pyannote Annotation."""
    from pyannote.core import Annotation, Segment

    ref = Annotation(uri=path.stem)
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            start, dur = float(parts[3]), float(parts[4])
            ref[Segment(start, start + dur)] = parts[7]
    return ref


def turns_to_annotation(turns):
    """Domain SpeakerTurns → pyannote Annotation (for scoring)."""
    from pyannote.core import Annotation, Segment

    hyp = Annotation()
    for turn in turns:
        hyp[Segment(turn.start, turn.end)] = turn.speaker
    return hyp


def der(reference, hypothesis) -> float:
    """DER with the mesh's convention: collar 0.25 s, overlap scored."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    return DiarizationErrorRate(collar=0.25, skip_overlap=False)(reference, hypothesis)


def run(diarizer, audio, **options):
    """Diarize and return the outcome (progress events are dropped)."""
    from services.diarization.core import DiarizationOptions, DiarizationOutcome

    for event in diarizer.diarize(audio, DiarizationOptions(**options)):
        if isinstance(event, DiarizationOutcome):
            return event
    raise RuntimeError("no outcome")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev")))
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--no-long", action="store_true", help="skip the 10-minute RTF run")
    parser.add_argument("--pyannote-dir", type=Path, help="benchmark a local pyannote pipeline instead")
    args = parser.parse_args()

    from faster_whisper import decode_audio

    from services.diarization.core import Diarizer
    from services.diarization.server import DiarizationSettings, build_backend

    settings = DiarizationSettings(torch_threads=args.threads, pyannote_dir=args.pyannote_dir)
    started = time.perf_counter()
    diarizer = Diarizer(build_backend(settings), settings.max_speakers)
    print(f"backend {diarizer.backend.name} loaded in {time.perf_counter() - started:.1f}s, "
          f"torch threads {args.threads}", flush=True)
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    rows = []
    for item in manifest["dia"]:
        audio = decode_audio(str(args.corpus / item["audio"]), sampling_rate=16000)
        outcome = run(diarizer, audio)
        error = der(load_rttm(args.corpus / item["rttm"]), turns_to_annotation(outcome.exclusive_turns))
        rows.append((item["audio"], str(item["speakers"]), str(outcome.speaker_count), f"{error:.2%}",
                     f"{outcome.processing_seconds / outcome.audio_duration:.4f}"))
    if not args.no_long:
        for item in manifest["long"]:
            audio = decode_audio(str(args.corpus / item["audio"]), sampling_rate=16000)
            outcome = run(diarizer, audio)
            rows.append((item["audio"], "-", str(outcome.speaker_count), "-",
                         f"{outcome.processing_seconds / outcome.audio_duration:.4f}"))
    header = ("file", "true speakers", "found speakers", "DER", "RTF")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
