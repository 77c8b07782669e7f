#!/usr/bin/env python
"""Diarization benchmark: DER and speaker count on the corpus conversations, RTF on long audio.

    PYANNOTE_METRICS_ENABLED=false .venv/bin/python benchmarks/bench_diarization.py \
        [--corpus ../shared/corpus-dev] [--hard build/corpus-hard] [--threads 2] [--no-long] \
        [--hour] [--pyannote-dir DIR]

Prints one table: file, true speakers, found speakers, DER (collar 0.25 s, overlap scored) and its
parts (missed speech, false alarm, speaker confusion), DER when told the true count, RTF, overlap
found / hit / true (seconds; hit = found on true overlap, collar 0), the peak resident memory of
the process after each file and, for the unscored long files, how far memory rose above the
decoded audio while diarizing it; then overlap precision and recall over the scored files.
`--hard` adds the harder conversations of `make corpus-hard` (benchmarks/gen_dia_hard.py; used by
default when build/corpus-hard/manifest.json exists). `--hour` adds one hour of audio: the
10-minute file six times over, concatenated by ffmpeg into a temporary file; run it alone
(`--hour --no-corpus --no-long`) to see the peak memory it alone needs.
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
    """RTTM file → pyannote Annotation (the file's single recording)."""
    from pyannote.database.util import load_rttm as read_rttm

    [annotation] = read_rttm(path).values()
    return annotation


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


def der_parts(reference, hypothesis) -> tuple[float, float, float, float]:
    """(DER, missed speech, false alarm, speaker confusion), each a share of the reference."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    parts = DiarizationErrorRate(collar=0.25, skip_overlap=False)(
        reference, hypothesis, detailed=True
    )
    total = parts["total"] or 1.0
    return (
        parts["diarization error rate"],
        parts["missed detection"] / total,
        parts["false alarm"] / total,
        parts["confusion"] / total,
    )


def run(diarizer, audio, **options):
    """Diarize and return the outcome (progress events are dropped)."""
    from asr_mesh.services.diarization.core import DiarizationOptions, DiarizationOutcome

    for event in diarizer.diarize(audio, DiarizationOptions(**options)):
        if isinstance(event, DiarizationOutcome):
            return event
    raise RuntimeError("no outcome")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak resident memory while a block runs, sampled from /proc every 20 ms (MiB)."""

    def __enter__(self):
        import threading

        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def overlap_seconds(annotation) -> float:
    """Seconds where two or more reference speakers talk at once."""
    return sum(seg.duration for seg in annotation.get_overlap())


def overlap_hit_seconds(reference, found) -> float:
    """Seconds of the found overlap regions that lie on the reference's overlap (collar 0)."""
    from pyannote.core import Segment

    truth = reference.get_overlap()
    return sum(truth.crop(Segment(r.start, r.end)).duration() for r in found)


def hour_file(long_flac: Path, directory: Path) -> Path:
    """The 10-minute corpus file six times over (one hour), made by ffmpeg's concat demuxer."""
    import subprocess

    listing = directory / "six.txt"
    listing.write_text("".join(f"file '{long_flac.resolve()}'\n" for _ in range(6)))
    out = directory / "hour.flac"
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            str(out),
        ],
        check=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev")),
    )
    parser.add_argument(
        "--hard",
        type=Path,
        default=REPO / "build" / "corpus-hard",
        help="harder conversations (make corpus-hard); skipped when absent",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--no-corpus", action="store_true", help="skip the corpus-dev conversations"
    )
    parser.add_argument("--no-hard", action="store_true", help="skip the harder conversations")
    parser.add_argument("--no-long", action="store_true", help="skip the 10-minute RTF run")
    parser.add_argument("--hour", action="store_true", help="add one hour of audio (RTF, memory)")
    parser.add_argument(
        "--only", nargs="*", default=[], help="only files whose name contains one of these"
    )
    parser.add_argument(
        "--pyannote-dir", type=Path, help="benchmark a local pyannote pipeline instead"
    )
    parser.add_argument(
        "--turn-extension",
        type=float,
        default=0.45,
        help="seconds turn edges grow into silence (0.15 suits tight references)",
    )
    args = parser.parse_args()

    import tempfile

    from faster_whisper import decode_audio

    from asr_mesh.services.diarization.core import Diarizer
    from asr_mesh.services.diarization.server import DiarizationSettings, build_backend

    settings = DiarizationSettings(
        torch_threads=args.threads,
        pyannote_dir=args.pyannote_dir,
        turn_extension_s=args.turn_extension,
    )
    started = time.perf_counter()
    diarizer = Diarizer(build_backend(settings), settings.max_speakers)
    print(
        f"backend {diarizer.backend.name} loaded in {time.perf_counter() - started:.1f}s, "
        f"torch threads {args.threads}, peak RSS {peak_rss_mib():.0f} MiB",
        flush=True,
    )
    scored: list[tuple[Path, dict]] = []
    if not args.no_corpus:
        manifest = json.loads((args.corpus / "manifest.json").read_text())
        scored += [(args.corpus, item) for item in manifest["dia"]]
    if not args.no_hard and (args.hard / "manifest.json").is_file():
        manifest = json.loads((args.hard / "manifest.json").read_text())
        scored += [(args.hard, item) for item in manifest["dia"]]
    elif not args.no_hard:
        print(f"no harder conversations in {args.hard} (make corpus-hard)", flush=True)
    unscored: list[tuple[str, Path]] = []
    if not args.no_long:
        manifest = json.loads((args.corpus / "manifest.json").read_text())
        unscored += [(item["audio"], args.corpus / item["audio"]) for item in manifest["long"]]
    tmp = tempfile.TemporaryDirectory()
    if args.hour:
        unscored.append(
            ("long.flac x6 (1 h)", hour_file(args.corpus / "long" / "long.flac", Path(tmp.name)))
        )

    def wanted(name: str) -> bool:
        return not args.only or any(word in name for word in args.only)

    rows = []
    totals = {"found": 0.0, "hit": 0.0, "true": 0.0, "invented": 0.0}

    def add_row(name, true_count, outcome, scores, overlap_cells, growth="-"):
        rows.append(
            (
                name,
                true_count,
                str(outcome.speaker_count),
                *scores,
                f"{outcome.processing_seconds / outcome.audio_duration:.4f}",
                overlap_cells,
                f"{peak_rss_mib():.0f}",
                growth,
            )
        )
        print("  ".join(rows[-1]), flush=True)

    for root, item in scored:
        if not wanted(item["audio"]):
            continue
        reference = load_rttm(root / item["rttm"])
        audio = decode_audio(str(root / item["audio"]), sampling_rate=16000)
        outcome = run(diarizer, audio)
        error, miss, false_alarm, confusion = der_parts(
            reference, turns_to_annotation(outcome.exclusive_turns)
        )
        # The same file told the true count: separates counting errors from clustering errors.
        told = run(diarizer, audio, num_speakers=item["speakers"])
        told_error = der(reference, turns_to_annotation(told.exclusive_turns))
        found = sum(r.end - r.start for r in outcome.overlaps)
        hit, true = overlap_hit_seconds(reference, outcome.overlaps), overlap_seconds(reference)
        if true > 0:
            totals["found"] += found
            totals["hit"] += hit
            totals["true"] += true
        else:
            totals["invented"] += found
        add_row(
            item["audio"],
            str(item["speakers"]),
            outcome,
            (
                f"{error:.2%}",
                f"{miss:.1%}",
                f"{false_alarm:.1%}",
                f"{confusion:.1%}",
                f"{told_error:.2%}",
            ),
            f"{found:.1f} / {hit:.1f} / {true:.1f}",
        )
    for name, path in unscored:
        if not wanted(name):
            continue
        audio = decode_audio(str(path), sampling_rate=16000)
        with RssSampler() as rss:
            outcome = run(diarizer, audio)
        del audio
        found = sum(r.end - r.start for r in outcome.overlaps)
        add_row(
            name, "-", outcome, ("-",) * 5, f"{found:.1f} / - / -", f"+{rss.peak - rss.start:.0f}"
        )
    tmp.cleanup()
    header = (
        "file",
        "true speakers",
        "found speakers",
        "DER",
        "miss",
        "false alarm",
        "confusion",
        "DER told count",
        "RTF",
        "overlap s found/hit/true",
        "peak RSS MiB",
        "RSS growth while diarizing MiB",
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    if totals["true"]:
        print(
            f"\noverlap detection (collar 0) over the files with true overlap: precision "
            f"{totals['hit'] / max(totals['found'], 1e-9):.2f}, recall {totals['hit'] / totals['true']:.2f} "
            f"({totals['hit']:.1f} of {totals['found']:.1f} s found on {totals['true']:.1f} s true); "
            f"invented on the scored files without overlap: {totals['invented']:.1f} s"
        )


if __name__ == "__main__":
    main()
