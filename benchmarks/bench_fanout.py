"""One long file over 1, 2, 3 transcription replicas: wall, first window, WER, peak memory, faults.

    .venv/bin/python benchmarks/bench_fanout.py [FILE ...] [--replicas 1,2,3] [--kill-at 15]
        [--chunk-speech-s 120] [--png build/bench_fanout.png] [--json build/bench_fanout.json]

Default FILE: corpus-dev long/long.flac (10 min). For each file a local mesh (separate
processes, `LocalMesh(transcription_replicas=N)`) runs:

- `single`: one replica, fan-out off: the whole file in one Transcribe call (today's path);
- `N replicas`: fan-out on (chunks of --chunk-speech-s seconds of speech), N = each of --replicas;
- `N replicas, kill`: the same with one transcription replica killed (SIGKILL) --kill-at
  seconds into the call (the supervisor restarts it; its windows go to the others).

Columns: wall seconds of the call through the SDK; first window = seconds until the gateway
reported the first finished window (progress "1 windows transcribed"; the whole call for
`single`); WER against FILE's .txt; words equal = share of the fan-out words identical to the
1-replica fan-out (same plan, so 100% is expected unless a window was decoded at a different
temperature); peak RSS of each transcription replica (VmHWM). Temperature 0 throughout, so runs
are comparable. On a 2-core machine N replicas share two cores, so wall time cannot fall with N:
the table shows correctness and fault tolerance; docs/fanout.md turns the per-window costs
into a wall-time model for GPU replicas.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "tests")]
CORPUS = Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev"))


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_variant(
    path: Path, replicas: int, fanout: bool, chunk_speech_s: float, kill_at: float | None
) -> dict:
    from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
    from asr_mesh.services.supervisor import LocalMesh

    env = {
        "ASR_GATEWAY_FANOUT_MIN_S": "60" if fanout else "0",
        "ASR_GATEWAY_FANOUT_CHUNK_SPEECH_S": str(chunk_speech_s),
        "ASR_GATEWAY_CACHE_ENABLED": "false",
        "PYANNOTE_METRICS_ENABLED": "false",
    }
    state = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    mesh = LocalMesh(
        state_dir=state,
        env=env,
        services=("preprocess", "transcription", "merge", "gateway"),
        transcription_replicas=replicas,
    )
    mesh.start()
    try:
        pids = [p.process.pid for p in mesh.replicas_of("transcription") if p.process]
        client = GatewayClient(mesh.gateway_address)
        started, first, killed = time.perf_counter(), [None], []

        def on_event(event) -> None:
            if event.WhichOneof("payload") == "progress" and event.progress.message.startswith(
                "1 windows"
            ):
                first[0] = first[0] or time.perf_counter() - started

        def killer() -> None:
            time.sleep(kill_at or 0)
            victim = pids[-1]
            rss = peak_rss_mb(victim)
            os.kill(victim, signal.SIGKILL)
            killed.append((victim, rss))

        if kill_at is not None:
            threading.Thread(target=killer, daemon=True).start()
        result = client.transcribe(
            path, TranscribeOptions(temperatures=(0.0,), no_cache=True), on_event
        )
        wall = time.perf_counter() - started
        peaks = [rss for pid, rss in killed] + [
            peak_rss_mb(pid) for pid in pids if pid not in dict(killed)
        ]
        words = [w.word for s in result.segments for w in s.words]
        client.close()
    finally:
        mesh.stop()
    return {
        "wall_s": wall,
        "first_window_s": first[0] or wall,
        "words": words,
        "peak_rss_mb": peaks,
        "killed": bool(killed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, nargs="*", default=[CORPUS / "long" / "long.flac"])
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--kill-at", type=float, default=15.0, help="seconds; 0 = no kill rows")
    parser.add_argument("--chunk-speech-s", type=float, default=120.0)
    parser.add_argument("--png", type=Path, default=REPO / "build" / "bench_fanout.png")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "bench_fanout.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from support.metrics import normalize, wer

    counts = [int(n) for n in args.replicas.split(",")]
    rows = []
    for path in args.audio:
        reference = path.with_suffix(".txt").read_text(encoding="utf-8")
        variants = [("single", 1, False, None)] + [(f"{n} replicas", n, True, None) for n in counts]
        variants += [
            (f"{n} replicas, kill", n, True, args.kill_at)
            for n in counts
            if n > 1 and args.kill_at > 0
        ]
        base_words = None
        for name, n, fanout, kill_at in variants:
            out = run_variant(path, n, fanout, args.chunk_speech_s, kill_at)
            text = " ".join(out["words"])
            if fanout and base_words is None:
                base_words = out["words"]
            same = (
                sum(a == b for a, b in zip(out["words"], base_words)) / max(len(base_words), 1)
                if fanout and base_words is not None and len(out["words"]) == len(base_words)
                else None
            )
            rows.append(
                {
                    "file": path.name,
                    "variant": name,
                    "replicas": n,
                    "wall_s": out["wall_s"],
                    "first_window_s": out["first_window_s"],
                    "wer": wer([reference], [text]),
                    "words_equal": same,
                    "peak_rss_mb": out["peak_rss_mb"],
                    "killed": out["killed"],
                    "words": len(normalize(text).split()),
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items()}), flush=True)

    table = Table(
        title=f"fan-out over transcription replicas (chunks of {args.chunk_speech_s:.0f} s of speech)"
    )
    for column in (
        "file",
        "variant",
        "wall s",
        "first window s",
        "WER",
        "words = 1 replica",
        "peak RSS per replica (MB)",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["file"],
            row["variant"],
            f"{row['wall_s']:.1f}",
            f"{row['first_window_s']:.1f}",
            f"{100 * row['wer']:.1f}%",
            "–" if row["words_equal"] is None else f"{100 * row['words_equal']:.1f}%",
            ", ".join(f"{m:.0f}" for m in row["peak_rss_mb"]),
        )
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['variant']}\n{r['file']}" for r in rows]
    ax.bar(range(len(rows)), [r["wall_s"] for r in rows], label="wall")
    ax.bar(range(len(rows)), [r["first_window_s"] for r in rows], label="first window", alpha=0.7)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("seconds")
    ax.legend()
    ax.set_title("fan-out on 2 CPU cores (replicas share the cores)")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png} and {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
