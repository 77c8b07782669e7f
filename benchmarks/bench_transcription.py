"""Transcription service vs plain faster-whisper, measured in the same run on the same machine.

    .venv/bin/python benchmarks/bench_transcription.py [--long ../shared/corpus-dev/long/long.flac]
        [--corpus ../shared/corpus-dev] [--threads 2] [--repeat 1] [--no-clips] [--extras]
        [--plot bench_transcription.png]

Long file: plain faster-whisper sequential (`WhisperModel.transcribe`), plain batched
(`BatchedInferencePipeline`, batch 8) and the service's default (the core's balanced profile,
in process, no gRPC), all with base/int8/beam 5/VAD/word timestamps and the same thread count,
one model load shared by all and excluded from the times. Runs are interleaved (`--repeat`
rounds of plain → batched → service) so load from other processes hits all three alike; the
table shows the median wall time and the process CPU time (less sensitive to contention).
Clips: the corpus-dev `asr` clips, corpus WER, plain vs service default.
`--extras`: 8 concurrent 1-minute requests vs one at a time, cold start (process start →
first result on a 30 s clip through gRPC), and RSS through load → work → idle unload.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "tests")]

from asr_mesh.services.common.domain import SAMPLE_RATE, Segment  # noqa: E402
from asr_mesh.services.transcription.core import TranscriptionOptions, TranscriptionSummary  # noqa: E402
from support.metrics import wer  # noqa: E402

MODEL_DIR = REPO / "models" / "whisper-base"
COMMON = dict(language="pt", beam_size=5, word_timestamps=True, vad_filter=True)
console = Console()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def load_int16(path: Path) -> np.ndarray:
    from faster_whisper import decode_audio

    return (decode_audio(str(path)) * 32768.0).round().astype(np.int16)


def service_text(transcriber, samples: np.ndarray, **options) -> tuple[str, TranscriptionSummary]:
    parts, summary = [], None
    for event in transcriber.transcribe(samples, TranscriptionOptions(**options)):
        if isinstance(event, Segment):
            parts.append(event.text)
        elif isinstance(event, TranscriptionSummary):
            summary = event
    return " ".join(parts), summary


def make_transcriber(threads: int, **settings):
    from asr_mesh.services.transcription.server import TranscriptionSettings, build_transcriber

    transcriber = build_transcriber(
        TranscriptionSettings(
            models_dir=REPO / "models", cpu_threads=threads, device="cpu", **settings
        )
    )
    transcriber.warm_up()
    return transcriber


def bench_long(path: Path, threads: int, repeat: int) -> list[dict]:
    from faster_whisper import BatchedInferencePipeline

    reference = path.with_suffix(".txt").read_text(encoding="utf-8")
    samples = load_int16(path)
    audio = samples.astype(np.float32) / 32768.0
    duration = len(samples) / SAMPLE_RATE
    transcriber = make_transcriber(threads)
    model = transcriber.registry.get("", "cpu", "int8")  # one model shared by all three
    batched = BatchedInferencePipeline(model)
    runs = {
        "plain sequential": lambda: " ".join(s.text for s in model.transcribe(audio, **COMMON)[0]),
        "plain batched (8)": lambda: " ".join(
            s.text for s in batched.transcribe(audio, batch_size=8, **COMMON)[0]
        ),
        "service default": lambda: service_text(transcriber, samples)[0],
    }
    measured: dict[str, list] = {name: [] for name in runs}
    for round_ in range(repeat):
        for name, fn in runs.items():
            load = os.getloadavg()[0]
            text, wall, cpu = timed(fn)
            measured[name].append((wall, cpu, wer([reference], [text]), load))
            console.print(
                f"  round {round_ + 1} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                f"WER {measured[name][-1][2]:.1%}, load {load:.1f}"
            )
    rows = []
    for name, values in measured.items():
        rows.append(
            {
                "pipeline": name,
                "wall_s": statistics.median(v[0] for v in values),
                "cpu_s": statistics.median(v[1] for v in values),
                "wer": statistics.median(v[2] for v in values),
                "duration_s": duration,
                "load": statistics.mean(v[3] for v in values),
            }
        )
    return rows


def bench_clips(corpus: Path, threads: int) -> list[dict]:
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    transcriber = make_transcriber(threads)
    model = transcriber.registry.get("", "cpu", "int8")
    refs, plain, service = [], [], []
    plain_s = service_s = duration = 0.0
    for entry in manifest["asr"]:
        samples = load_int16(corpus / entry["audio"])
        duration += len(samples) / SAMPLE_RATE
        refs.append(entry["text"])
        text, wall, _ = timed(
            lambda samples=samples: " ".join(
                s.text for s in model.transcribe(samples.astype(np.float32) / 32768.0, **COMMON)[0]
            )
        )
        plain.append(text)
        plain_s += wall
        (text, _), wall, _ = timed(lambda samples=samples: service_text(transcriber, samples))
        service.append(text)
        service_s += wall
    return [
        {
            "pipeline": "plain sequential",
            "wall_s": plain_s,
            "wer": wer(refs, plain),
            "duration_s": duration,
        },
        {
            "pipeline": "service default",
            "wall_s": service_s,
            "wer": wer(refs, service),
            "duration_s": duration,
        },
    ]


def bench_concurrency(path: Path, threads: int, requests: int = 8) -> list[dict]:
    samples = load_int16(path)
    minute = 60 * SAMPLE_RATE
    pieces = [samples[k * minute : (k + 1) * minute] for k in range(requests)]
    rows = []
    for workers in (1, 2):
        transcriber = make_transcriber(threads, num_workers=workers, max_queued=requests)
        _, serial, _ = timed(
            lambda transcriber=transcriber: [service_text(transcriber, p) for p in pieces]
        )

        def concurrent(transcriber=transcriber):
            out = [None] * requests
            jobs = [
                threading.Thread(
                    target=lambda k=k: out.__setitem__(k, service_text(transcriber, pieces[k]))
                )
                for k in range(requests)
            ]
            for job in jobs:
                job.start()
            for job in jobs:
                job.join()
            return out

        _, together, _ = timed(concurrent)
        audio = requests * 60.0
        rows.append(
            {
                "workers": workers,
                "serial_s": serial,
                "concurrent_s": together,
                "serial_x": audio / serial,
                "concurrent_x": audio / together,
            }
        )
    return rows


COLD_START = """
import sys, time, subprocess, os
t0 = time.perf_counter()
sys.path[:0] = [{repo!r}, {gen!r}]
import grpc, numpy as np
env = dict(os.environ, ASR_TRANSCRIPTION_PORT="0", ASR_TRANSCRIPTION_CPU_THREADS="{threads}",
           ASR_TRANSCRIPTION_DEVICE="cpu", OTEL_TRACES_EXPORTER="none")
proc = subprocess.Popen([sys.executable, "-m", "asr_mesh.services.transcription"], cwd={repo!r}, env=env,
                        stdout=subprocess.PIPE, text=True)
port = None
for line in proc.stdout:
    if line.startswith("ASR_READY"):
        port = int(line.split("port=")[1]); break
ready = time.perf_counter() - t0
from asr.common.v1 import audio_pb2
from asr.transcription.v1 import transcription_service_pb2 as pb, transcription_service_pb2_grpc as pb_grpc
pcm = np.load({clip!r}).tobytes()
fmt = audio_pb2.PcmFormat(sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE)
def reqs():
    yield pb.TranscribeRequest(config=pb.TranscriptionConfig(format=fmt))
    for k in range(0, len(pcm), 65536):
        yield pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=pcm[k:k+65536]))
stub = pb_grpc.TranscriptionServiceStub(grpc.insecure_channel(f"127.0.0.1:{{port}}"))
first = None
for r in stub.Transcribe(reqs(), timeout=300):
    if r.WhichOneof("payload") == "segment" and first is None:
        first = time.perf_counter() - t0
done = time.perf_counter() - t0
proc.terminate(); proc.wait(30)
print(f"COLD {{ready:.2f}} {{first or done:.2f}} {{done:.2f}}")
"""


def bench_cold_start(path: Path, threads: int) -> dict:
    clip = Path("/tmp") / f"bench-cold-{os.getpid()}.npy"
    np.save(clip, load_int16(path)[: 30 * SAMPLE_RATE])
    code = COLD_START.format(repo=str(REPO), gen=str(REPO / "gen"), threads=threads, clip=str(clip))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    clip.unlink(missing_ok=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("COLD")), None)
    if line is None:
        return {"error": out.stderr[-500:]}
    ready, first, done = map(float, line.split()[1:])
    return {"ready_s": ready, "first_segment_s": first, "result_s": done}


RSS_PROBE = """
import sys, time
sys.path[:0] = [{repo!r}, {gen!r}]
import numpy as np
from pathlib import Path
from benchmarks.bench_transcription import rss_mb, service_text
from asr_mesh.services.transcription.server import TranscriptionSettings, build_transcriber
samples = np.load({clip!r})
t = build_transcriber(TranscriptionSettings(models_dir=Path({models!r}), cpu_threads={threads}, device="cpu",
                                            idle_unload_s=1.0))
out = [("before load", rss_mb())]
t.registry.get("", "cpu", "int8"); out.append(("after load", rss_mb()))
service_text(t, samples); out.append(("after a 60 s request", rss_mb()))
t.registry.start_reaper(0.2); time.sleep(2.0)
out.append(("after idle unload" if not t.registry.loaded_count() else "still loaded", rss_mb()))
service_text(t, samples); out.append(("reloaded + request", rss_mb()))
t.registry.unload_idle(force=True); out.append(("after second unload", rss_mb()))
print("RSS", "|".join(f"{{k}}={{v:.0f}}" for k, v in out))
"""


def bench_rss(path: Path, threads: int) -> list[tuple[str, float]]:
    clip = Path("/tmp") / f"bench-rss-{os.getpid()}.npy"
    np.save(clip, load_int16(path)[: 60 * SAMPLE_RATE])
    code = RSS_PROBE.format(
        repo=str(REPO),
        gen=str(REPO / "gen"),
        clip=str(clip),
        models=str(REPO / "models"),
        threads=threads,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    clip.unlink(missing_ok=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RSS")), None)
    if line is None:
        return [("error", 0.0)]
    return [(k, float(v)) for k, v in (item.split("=") for item in line[4:].split("|"))]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["pipeline"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r["wall_s"] for r in rows], color=["grey", "orange", "green"][: len(rows)])
    left.set_ylabel("seconds (median wall)")
    left.set_title("10-minute file: time")
    right.bar(names, [100 * r["wer"] for r in rows], color=["grey", "orange", "green"][: len(rows)])
    right.set_ylabel("WER %")
    right.set_title("10-minute file: WER")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    corpus_default = REPO.parent / "shared" / "corpus-dev"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=Path, default=corpus_default / "long" / "long.flac")
    parser.add_argument("--corpus", type=Path, default=corpus_default)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds on the long file")
    parser.add_argument("--no-clips", action="store_true")
    parser.add_argument("--extras", action="store_true", help="concurrency, cold start, RSS")
    parser.add_argument("--plot", type=Path, default=Path("bench_transcription.png"))
    args = parser.parse_args()
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")

    console.print(
        f"load average at start: {os.getloadavg()} on {os.cpu_count()} CPUs "
        "(other processes share the machine: compare rows, not runs)"
    )
    rows = bench_long(args.long, args.threads, args.repeat)
    plain = rows[0]
    table = Table(
        title=f"{args.long.name}: {plain['duration_s']:.0f} s of audio, "
        f"{args.threads} threads, median of {args.repeat}"
    )
    for column in ("pipeline", "wall s", "RTF", "CPU s", "WER", "wall vs plain", "CPU vs plain"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["pipeline"],
            f"{row['wall_s']:.1f}",
            f"{row['wall_s'] / row['duration_s']:.3f}",
            f"{row['cpu_s']:.1f}",
            f"{row['wer']:.1%}",
            f"{row['wall_s'] / plain['wall_s']:.2f}x",
            f"{row['cpu_s'] / plain['cpu_s']:.2f}x",
        )
    console.print(table)
    plot(rows, args.plot)
    console.print(f"plot: {args.plot}")

    if not args.no_clips:
        clips = bench_clips(args.corpus, args.threads)
        table = Table(
            title=f"corpus-dev asr clips ({len(json.loads((args.corpus / 'manifest.json').read_text())['asr'])}"
            f" clips, {clips[0]['duration_s']:.0f} s)"
        )
        for column in ("pipeline", "wall s", "RTF", "corpus WER"):
            table.add_column(column, justify="right")
        for row in clips:
            table.add_row(
                row["pipeline"],
                f"{row['wall_s']:.1f}",
                f"{row['wall_s'] / row['duration_s']:.3f}",
                f"{row['wer']:.1%}",
            )
        console.print(table)

    if args.extras:
        table = Table(title="8 requests of 60 s: one at a time vs all at once (service core)")
        for column in (
            "workers",
            "serial s",
            "concurrent s",
            "serial audio s/s",
            "concurrent audio s/s",
        ):
            table.add_column(column, justify="right")
        for row in bench_concurrency(args.long, args.threads):
            table.add_row(
                str(row["workers"]),
                f"{row['serial_s']:.1f}",
                f"{row['concurrent_s']:.1f}",
                f"{row['serial_x']:.1f}",
                f"{row['concurrent_x']:.1f}",
            )
        console.print(table)
        cold = bench_cold_start(args.long, args.threads)
        console.print(f"cold start (process start → ...): {cold}")
        table = Table(title="RSS of a transcription process (MB)")
        table.add_column("moment")
        table.add_column("RSS MB", justify="right")
        for moment, value in bench_rss(args.long, args.threads):
            table.add_row(moment, f"{value:.0f}")
        console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
