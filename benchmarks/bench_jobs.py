"""Jobs and the result cache, measured: submit latency, cache hit vs first run, a job across a
gateway kill, and the embedded store's footprint after 1,000 jobs.

    .venv/bin/python benchmarks/bench_jobs.py [--audio ../shared/corpus-dev/long/long.flac]
        [--kill-audio ../shared/corpus-dev/dia/conv0.flac] [--jobs 1000] [--png jobs.png]

Starts the local mesh (separate processes, embedded SQLite job store and disk cache in a fresh
state directory) and prints one table:

1. SubmitJob → job id for the long file (upload and store only; the chain runs afterwards),
2. the first run of that file as a job (submit → SUCCEEDED), then the same file through
   Transcribe and as a second job, both answered by the result cache,
3. a job whose gateway is killed with SIGKILL while it transcribes: the gateway is restarted on
   the same state directory and the job finishes (lease 5 s here),
4. the embedded store alone (in this process): RSS and file size after `--jobs` finished jobs,
   each with a results blob the size of a 10-minute transcript.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from asr.common.v1 import progress_pb2  # noqa: E402
from asr.gateway.v1 import jobs_pb2 as jpb  # noqa: E402
from asr_mesh.client.sdk import GatewayClient, TranscribeOptions  # noqa: E402
from asr_mesh.services.supervisor import BACKENDS, LocalMesh  # noqa: E402

CORPUS = Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev"))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mesh_rows(audio: Path, kill_audio: Path, rows: list[tuple[str, float, str]]) -> None:
    state = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    with LocalMesh(
        state_dir=state, env={"ASR_GATEWAY_JOB_LEASE_S": "5", "ASR_GATEWAY_JOB_POLL_S": "0.2"}
    ) as mesh:
        options = TranscribeOptions(formats=("json", "srt"))
        with GatewayClient(mesh.gateway_address) as client:
            started = time.perf_counter()
            job = client.submit_job(audio, options)
            rows.append(
                (
                    f"SubmitJob → job id ({audio.name}, {audio.stat().st_size / 1e6:.1f} MB)",
                    time.perf_counter() - started,
                    f"state {jpb.JobState.Name(job.state)}",
                )
            )
            done = client.wait_job(job.job_id, timeout_s=3600, poll_s=0.2)
            first = time.perf_counter() - started
            rows.append(
                (
                    "first run as a job (submit → succeeded)",
                    first,
                    f"{done.result.segment_count} segments, cache_hit={done.result.cache_hit}",
                )
            )
            started = time.perf_counter()
            hit = client.transcribe(audio, options)
            hit_s = time.perf_counter() - started
            rows.append(
                (
                    "same file through Transcribe (cache hit)",
                    hit_s,
                    f"cache_hit={hit.cache_hit}, {first / hit_s:.0f}× faster than the first run",
                )
            )
            started = time.perf_counter()
            again = client.wait_job(
                client.submit_job(audio, options).job_id, timeout_s=600, poll_s=0.05
            )
            rows.append(
                (
                    "same file as a second job (cache hit)",
                    time.perf_counter() - started,
                    f"cache_hit={again.result.cache_hit}",
                )
            )

            # A job across a gateway kill.
            job = client.submit_job(kill_audio, TranscribeOptions(no_cache=True))
            submitted = time.perf_counter()
            while True:
                state = client.get_job(job.job_id)
                if (
                    state.state == jpb.JOB_STATE_RUNNING
                    and state.progress.stage == progress_pb2.STAGE_TRANSCRIPTION
                ):
                    break
                time.sleep(0.05)
        gateway = mesh.services["gateway"].process
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        killed = time.perf_counter()
        mesh._spawn(
            "gateway",
            {
                f"ASR_GATEWAY_{name.upper()}_ADDRESS": mesh.services[name].address
                for name in BACKENDS
            },
        )
        mesh._wait(("gateway",))
        with GatewayClient(mesh.gateway_address) as client:
            done = client.wait_job(job.job_id, timeout_s=600, poll_s=0.2)
        rows.append(
            (
                f"job across a kill -9 of the gateway ({kill_audio.name})",
                time.perf_counter() - submitted,
                f"{jpb.JobState.Name(done.state)} after {done.attempts} attempts; "
                f"{time.perf_counter() - killed:.1f} s from the kill (restart + 5 s lease + rerun)",
            )
        )


def store_rows(count: int, rows: list[tuple[str, float, str]]) -> None:
    # A 10-minute transcript shaped like the real one: the long file's reference text as ~150
    # segments of words with timings, and JSON + SRT documents rendered from them.
    import json

    from asr_mesh.services.common import convert
    from asr_mesh.services.common.domain import MediaReport, Segment, Word
    from asr_mesh.services.gateway.jobs import (
        SUCCEEDED,
        JobRecord,
        new_job_id,
        options_to_dict,
        summary_of,
    )
    from asr_mesh.services.gateway.jobs_store import SqliteJobStore
    from asr_mesh.services.gateway.pipeline import (
        ChainOptions,
        ChainResult,
        Merged,
        RenderedDocument,
        Transcript,
    )
    from asr_mesh.services.gateway.result_cache import encode_result

    text = (CORPUS / "long" / "long.txt").read_text(encoding="utf-8").split()
    segments = []
    for i in range(150):
        chunk = [text[(i * 12 + j) % len(text)] for j in range(12)]
        segments.append(
            Segment(
                i,
                i * 4.0,
                i * 4.0 + 3.8,
                " ".join(chunk),
                tuple(
                    Word(i * 4.0 + j * 0.3, i * 4.0 + j * 0.3 + 0.25, w, 0.9)
                    for j, w in enumerate(chunk)
                ),
            )
        )
    as_json = json.dumps(
        {
            "segments": [
                {
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "words": [
                        {
                            "start": w.start,
                            "end": w.end,
                            "word": w.word,
                            "probability": w.probability,
                        }
                        for w in s.words
                    ],
                }
                for s in segments
            ]
        },
        ensure_ascii=False,
        indent=2,
    )
    as_srt = "\n".join(
        f"{s.id + 1}\n00:00:{s.start:06.3f} --> 00:00:{s.end:06.3f}\n{s.text}\n" for s in segments
    )
    documents = [
        RenderedDocument("json", as_json, "json", "application/json"),
        RenderedDocument("srt", as_srt, "srt", "application/x-subrip"),
    ]
    result = ChainResult(
        MediaReport(container="flac"),
        600.0,
        Transcript([], "pt-BR", "base"),
        None,
        Merged([convert.segment_to_proto(s) for s in segments], [], documents),
        60.0,
    )
    blob = encode_result(result)
    path = Path(tempfile.mkdtemp(prefix="bench-store-")) / "jobs.sqlite"
    before = rss_mib()
    store = SqliteJobStore(path)
    started = time.perf_counter()
    for n in range(count):
        record = JobRecord(
            new_job_id(),
            options_to_dict(ChainOptions(filename=f"call-{n}.flac")),
            filename=f"call-{n}.flac",
            input_path=f"/spool/{n}/input",
            input_sha256="ab" * 32,
            upload_bytes=9_000_000,
            trace_id="cd" * 16,
            span_id="ef" * 8,
        )
        store.submit(record)
        claimed = store.claim("bench", 30.0)
        store.progress(claimed.job_id, "bench", "transcription", 0.5, 0.5, "")
        store.finish(
            claimed.job_id,
            "bench",
            SUCCEEDED,
            retention_s=86400,
            summary=summary_of(result, False),
            results=blob,
        )
    elapsed = time.perf_counter() - started
    listed = store.list(None, 50, None)
    size = sum(p.stat().st_size for p in path.parent.iterdir()) / 2**20
    rows.append(
        (
            f"embedded store: {count} jobs submitted, run, finished",
            elapsed,
            f"{elapsed / count * 1000:.1f} ms per job lifecycle; list(50) → {len(listed)}",
        )
    )
    rows.append(
        (
            f"embedded store after {count} jobs: process RSS growth (MiB)",
            rss_mib() - before,
            f"file {size:.1f} MiB on disk ({len(blob) / 1024:.0f} KiB compressed results per job)",
        )
    )
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=CORPUS / "long" / "long.flac")
    parser.add_argument("--kill-audio", type=Path, default=CORPUS / "dia" / "conv0.flac")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--no-mesh", action="store_true", help="only the store measurement")
    parser.add_argument("--png", type=Path, help="also save the timings as a bar chart")
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []
    store_rows(args.jobs, rows)  # first: this process is still small
    if not args.no_mesh:
        mesh_rows(args.audio, args.kill_audio, rows)
    table = Table(title="jobs and the result cache")
    for column in ("measurement", "value", "notes"):
        table.add_column(column)
    for name, value, notes in rows:
        table.add_row(name, f"{value:.3f}", notes)
    Console(width=200).print(table)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        timed = [(n, v) for n, v, _ in rows if "RSS" not in n]
        fig, ax = plt.subplots(figsize=(10, 0.6 * len(timed) + 1))
        ax.barh([n for n, _ in timed][::-1], [v for _, v in timed][::-1])
        ax.set_xscale("log")
        ax.set_xlabel("seconds (log)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"chart written to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
