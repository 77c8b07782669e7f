"""Load and soak against a local mesh: throughput, latency percentiles, errors, RSS over time.

    .venv/bin/python benchmarks/bench_load.py [--audio CLIP] [--levels 1,8,32,64]
        [--per-caller 2] [--soak 1000] [--diarize] [--png build/bench_load.png]

Starts the local mesh (separate processes, fresh state directory, result cache bypassed with
`no_cache` so every request runs the whole chain) and then:

1. for each concurrency level, that many callers (threads, one SDK client each) send
   `--per-caller` requests each of the short clip at once: requests/s over the level's wall time,
   p50/p95/p99 latency of the successful ones, final errors by kind (after the SDK's own retries,
   which are counted too);
2. a soak of `--soak` sequential requests, sampling every service's RSS (VmRSS from /proc)
   along the way: RSS at start, end and peak per service, and mean latency of the first and
   last tenth of the soak (is it flat?).

Prints both tables, writes the figures as JSON (`--json`) and a PNG (`--png`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from asr_mesh.client.sdk import GatewayClient, TranscribeOptions  # noqa: E402
from asr_mesh.services.common.errors import MeshError  # noqa: E402
from asr_mesh.services.supervisor import LocalMesh  # noqa: E402

CORPUS = Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev"))


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class RetryCounter(logging.Handler):
    """Counts the SDK's retry log lines (RESOURCE_EXHAUSTED / UNAVAILABLE answered, tried again)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            with self._lock2:
                self.count += 1


def one_request(address: str, audio: Path, options: TranscribeOptions) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        with GatewayClient(address) as client:
            client.transcribe(audio, options, timeout_s=600)
        return time.perf_counter() - started, ""
    except MeshError as exc:
        return time.perf_counter() - started, f"{exc.status.name}: {exc.message[:80]}"


def load_level(
    address: str,
    audio: Path,
    options: TranscribeOptions,
    callers: int,
    per_caller: int,
    retries: RetryCounter,
) -> dict:
    before = retries.count
    started = time.perf_counter()

    def caller(_: int) -> list[tuple[float, str]]:
        return [one_request(address, audio, options) for _ in range(per_caller)]

    with ThreadPoolExecutor(callers) as pool:
        outcomes = [o for batch in pool.map(caller, range(callers)) for o in batch]
    wall = time.perf_counter() - started
    ok = [seconds for seconds, error in outcomes if not error]
    errors = Counter(error.split(":")[0] for _, error in outcomes if error)
    return {
        "callers": callers,
        "requests": len(outcomes),
        "ok": len(ok),
        "wall_s": wall,
        "rps": len(ok) / wall if wall else 0.0,
        "p50_s": percentile(ok, 50),
        "p95_s": percentile(ok, 95),
        "p99_s": percentile(ok, 99),
        "errors": dict(errors),
        "retries": retries.count - before,
        "error_examples": sorted({e for _, e in outcomes if e})[:3],
    }


def soak(mesh: LocalMesh, audio: Path, options: TranscribeOptions, n: int) -> dict:
    pids = {name: service.process.pid for name, service in mesh.services.items() if service.process}
    every = max(1, n // 50)
    samples: list[dict] = [{"request": 0, **{name: rss_mib(pid) for name, pid in pids.items()}}]
    latencies, errors = [], Counter()
    with GatewayClient(mesh.gateway_address) as client:
        for i in range(1, n + 1):
            started = time.perf_counter()
            try:
                client.transcribe(audio, options, timeout_s=600)
                latencies.append(time.perf_counter() - started)
            except MeshError as exc:
                errors[exc.status.name] += 1
                latencies.append(float("nan"))
            if i % every == 0 or i == n:
                samples.append({"request": i, **{name: rss_mib(pid) for name, pid in pids.items()}})
                print(
                    f"  soak {i}/{n}: "
                    + ", ".join(
                        f"{k} {v:.0f} MiB" for k, v in samples[-1].items() if k != "request"
                    ),
                    flush=True,
                )
    tenth = max(1, n // 10)
    ok_first = [x for x in latencies[:tenth] if x == x]
    ok_last = [x for x in latencies[-tenth:] if x == x]
    return {
        "requests": n,
        "errors": dict(errors),
        "latencies_s": latencies,
        "rss_mib": samples,
        "first_tenth_mean_s": statistics.fmean(ok_first) if ok_first else float("nan"),
        "last_tenth_mean_s": statistics.fmean(ok_last) if ok_last else float("nan"),
        "restarts": {name: service.restarts for name, service in mesh.services.items()},
    }


def print_tables(levels: list[dict], soaked: dict | None) -> None:
    print("\nLoad (each caller sends its requests one after another; all callers at once)")
    print(
        f"{'callers':>7} {'requests':>8} {'ok':>4} {'req/s':>6} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
        f"{'retries':>7}  errors"
    )
    for row in levels:
        errors = ", ".join(f"{k} ×{v}" for k, v in row["errors"].items()) or "none"
        print(
            f"{row['callers']:>7} {row['requests']:>8} {row['ok']:>4} {row['rps']:>6.2f} {row['p50_s']:>7.2f} "
            f"{row['p95_s']:>7.2f} {row['p99_s']:>7.2f} {row['retries']:>7}  {errors}"
        )
    if soaked is None:
        return
    first, last = soaked["rss_mib"][0], soaked["rss_mib"][-1]
    print(
        f"\nSoak: {soaked['requests']} sequential requests, errors: {soaked['errors'] or 'none'}, "
        f"restarts: {soaked['restarts']}"
    )
    print(f"{'service':>14} {'RSS start MiB':>14} {'RSS end MiB':>12} {'peak MiB':>9}")
    for name in (k for k in first if k != "request"):
        peak = max(sample[name] for sample in soaked["rss_mib"])
        print(f"{name:>14} {first[name]:>14.0f} {last[name]:>12.0f} {peak:>9.0f}")
    print(
        f"latency mean: first tenth {soaked['first_tenth_mean_s']:.2f} s, "
        f"last tenth {soaked['last_tenth_mean_s']:.2f} s"
    )


def plot(levels: list[dict], soaked: dict | None, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if soaked else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    axes = axes if panels > 1 else [axes]
    callers = [row["callers"] for row in levels]
    ax = axes[0]
    for key, label in (("p50_s", "p50"), ("p95_s", "p95"), ("p99_s", "p99")):
        ax.plot(callers, [row[key] for row in levels], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("latency (s)")
    twin = ax.twinx()
    twin.bar(
        callers,
        [row["rps"] for row in levels],
        width=[c * 0.3 for c in callers],
        alpha=0.25,
        color="gray",
        label="req/s",
    )
    twin.set_ylabel("requests/s (bars)")
    ax.legend(loc="upper left")
    ax.set_title("latency and throughput")
    if soaked:
        ax = axes[1]
        samples = soaked["rss_mib"]
        for name in (k for k in samples[0] if k != "request"):
            ax.plot([s["request"] for s in samples], [s[name] for s in samples], label=name)
        ax.set_xlabel("request")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"RSS over a {soaked['requests']}-request soak")
        ax.legend(fontsize=8)
        ax = axes[2]
        ax.plot(range(1, len(soaked["latencies_s"]) + 1), soaked["latencies_s"], lw=0.6)
        ax.set_xlabel("request")
        ax.set_ylabel("latency (s)")
        ax.set_title("latency over the soak")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"figure: {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--audio",
        type=Path,
        default=CORPUS / "asr" / "009.flac",
        help="the clip every request sends (default: the shortest corpus-dev clip)",
    )
    parser.add_argument("--levels", default="1,8,32,64", help="concurrent callers, comma-separated")
    parser.add_argument(
        "--per-caller", type=int, default=2, help="requests each caller sends per level"
    )
    parser.add_argument(
        "--soak", type=int, default=1000, help="sequential requests of the soak (0 = none)"
    )
    parser.add_argument(
        "--diarize", action="store_true", help="ask for speakers too (starts diarization)"
    )
    parser.add_argument("--png", type=Path, default=REPO / "build" / "bench_load.png")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "bench_load.json")
    args = parser.parse_args()
    retries = RetryCounter()
    logging.getLogger("asr_mesh.client.sdk").addHandler(retries)
    logging.getLogger("asr_mesh.client.sdk").setLevel(logging.INFO)
    options = TranscribeOptions(diarize=args.diarize, no_cache=True)
    services = ["preprocess", "transcription", "merge", "gateway"] + (
        ["diarization"] if args.diarize else []
    )
    state = Path(tempfile.mkdtemp(prefix="bench-load-"))
    print(f"local mesh in {state}; clip {args.audio}", flush=True)
    with LocalMesh(
        state_dir=state,
        services=services,
        env={"OTEL_TRACES_EXPORTER": os.environ.get("OTEL_TRACES_EXPORTER", "file")},
    ) as mesh:
        # One warm-up request: model loading is not what this measures.
        one_request(mesh.gateway_address, args.audio, options)
        levels = []
        for callers in (int(c) for c in args.levels.split(",") if c.strip()):
            print(f"level: {callers} callers × {args.per_caller} requests", flush=True)
            levels.append(
                load_level(
                    mesh.gateway_address, args.audio, options, callers, args.per_caller, retries
                )
            )
        soaked = soak(mesh, args.audio, options, args.soak) if args.soak > 0 else None
    print_tables(levels, soaked)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"audio": str(args.audio), "levels": levels, "soak": soaked}, indent=1)
    )
    plot(levels, soaked, args.png)


if __name__ == "__main__":
    main()
