"""First result fast? Plain faster-whisper vs `asr transcribe`, cold and warm, in one run.

    .venv/bin/python benchmarks/bench_cold.py [AUDIO] [--runs 3] [--png build/bench_cold.png]

Every variant is a fresh process, as a user runs it, on the same ~30 s clip (default corpus-dev
dia/conv0.flac), in alternating order:

- plain: a Python process that imports faster-whisper, loads base int8 and transcribes with the
  mesh's settings (beam 5, VAD, word timestamps, language pt);
- cold: `asr transcribe FILE` with no mesh running (it starts the background mesh);
- warm: `asr transcribe FILE` again, the mesh left running by the cold call;
- the same two with `--diarize` (cold starts all five services).

Wall time is the process's; CPU seconds are the process's own plus, for the CLI, the CPU the
mesh processes used during the call (utime+stime+cutime+cstime from /proc, so ffmpeg children
count); peak memory is the largest sum over all processes of the run (the CLI and every mesh
process), sampled from /proc every 50 ms, twice: PSS (proportional set size: a page shared by
n processes counts 1/n in each, so the sum is what the run occupies; the goal is judged on it)
and RSS (each process's resident pages, shared ones counted in every process that maps them:
an upper bound). For one process (plain) the two nearly agree. `asr cold, no prefork` is the
cold start with every service its own interpreter (ASR_LOCAL_MESH_PREFORK=false). Medians over --runs. A second table says where the
time goes: import time of each service module, time from spawn to ready per service on the cold
start (mesh.json `ready_s`), and the stages of a warm request from its trace.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SPAWNED = "asr cold, no prefork"
PRELOAD = "import importlib, asr_mesh.services.prefork as p; [importlib.import_module(m) for m in p.PRELOAD]"
PLAIN = """
import sys
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8")
segments, _ = model.transcribe(sys.argv[2], language="pt", beam_size=5, word_timestamps=True, vad_filter=True)
print(sum(len(s.words) for s in segments), "words")
"""


def _pss(pid: str) -> int:
    """Proportional set size in bytes: private pages plus each shared page divided by the
    number of processes sharing it (what a set of processes really occupies, summed)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _marked(marker: bytes) -> dict[int, tuple[float, int, int]]:
    """pid → (CPU seconds incl. waited children, RSS bytes, PSS bytes) of processes whose
    environment holds `marker`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker not in Path(f"/proc/{entry}/environ").read_bytes():
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()
            rss = int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * PAGE
            pss = _pss(entry)
        except (OSError, IndexError):
            continue
        cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
        found[int(entry)] = (cpu, rss, pss)
    return found


class Sampler:
    """Peak summed RSS and PSS and the CPU used by the marked processes while it runs."""

    def __init__(self, marker: bytes):
        self.marker = marker
        self.before = {pid: cpu for pid, (cpu, _, _) in _marked(marker).items()}
        self.last: dict[int, float] = dict(self.before)
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def _sample(self) -> None:
        seen = _marked(self.marker)
        self.peak_rss = max(self.peak_rss, sum(rss for _, rss, _ in seen.values()))
        self.peak_pss = max(self.peak_pss, sum(pss for _, _, pss in seen.values()))
        for pid, (cpu, _, _) in seen.items():
            self.last[pid] = cpu

    def finish(self, exclude: int) -> float:
        """Stop; CPU seconds the marked processes (other than `exclude`) used meanwhile."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(
            cpu - self.before.get(pid, 0.0) for pid, cpu in self.last.items() if pid != exclude
        )


def measure(cmd: list[str], env: dict[str, str], marker: bytes) -> dict[str, float]:
    sampler = Sampler(marker)
    with tempfile.TemporaryFile() as err_file:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # the CLI's rusage, its waited children included
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
    others = sampler.finish(exclude=proc.pid)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed ({proc.returncode}): {err[-500:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime + others,
        "rss": max(sampler.peak_rss, usage.ru_maxrss * 1024),
        "pss": sampler.peak_pss or usage.ru_maxrss * 1024,
        "stderr": err,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    corpus = Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev"))
    parser.add_argument("audio", type=Path, nargs="?", default=corpus / "dia" / "conv0.flac")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--png", type=Path, default=REPO / "build" / "bench_cold.png")
    parser.add_argument("--no-diarize", action="store_true", help="skip the --diarize variants")
    parser.add_argument(
        "--no-prefork-variant",
        action="store_true",
        help=f"skip '{SPAWNED}' (ASR_LOCAL_MESH_PREFORK=false)",
    )
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    marker = f"ASR_BENCH_MARK={state}".encode()
    env = {
        **os.environ,
        "ASR_STATE_DIR": str(state),
        "ASR_BENCH_MARK": str(state),
        "PYANNOTE_METRICS_ENABLED": "false",
        "PYTHONPATH": f"{REPO}:{REPO / 'gen'}",
        "ASR_LOCAL_MESH_OWNER_PID": str(os.getpid()),
    }
    out = state / "out"
    asr = [sys.executable, "-m", "asr_mesh.client.cli"]
    # --no-cache: every run decodes (the gateway's result cache would answer the repeated file).
    transcribe = [*asr, "transcribe", str(args.audio), "-o", str(out), "--quiet", "--no-cache"]
    variants = {
        "plain faster-whisper": [
            sys.executable,
            "-c",
            PLAIN,
            str(REPO / "models" / "whisper-base"),
            str(args.audio),
        ],
        "asr cold": transcribe,
        "asr warm": transcribe,
    }
    if not args.no_prefork_variant:
        # The same cold start with every service its own interpreter (no prefork template).
        variants[SPAWNED] = transcribe
    if not args.no_diarize:
        variants["asr cold --diarize"] = [*transcribe, "--diarize"]
        variants["asr warm --diarize"] = [*transcribe, "--diarize"]
    results: dict[str, list[dict]] = {name: [] for name in variants}
    ready: list[dict[str, float]] = []

    def stop_mesh() -> None:
        subprocess.run([*asr, "serve", "--stop"], env=env, cwd=REPO, capture_output=True)

    try:
        for run in range(args.runs):
            for name, cmd in variants.items():
                if "cold" in name or name.startswith(
                    "plain"
                ):  # plain runs alone, not beside a mesh
                    stop_mesh()
                run_env = {**env, "ASR_LOCAL_MESH_PREFORK": "false"} if name == SPAWNED else env
                measured = measure(cmd, run_env, marker)
                results[name].append(measured)
                if name == SPAWNED:
                    stop_mesh()  # the next variants use the default (forked) mesh
                if name == "asr cold":
                    table = json.loads((state / "mesh.json").read_text())
                    ready.append(
                        {k: v[0]["ready_s"] for k, v in table.items() if "ready_s" in v[0]}
                    )
                print(
                    f"run {run + 1} {name}: {measured['wall']:.2f} s wall, {measured['cpu']:.1f} CPU-s, "
                    f"RSS {measured['rss'] / 1e6:.0f} MB, PSS {measured['pss'] / 1e6:.0f} MB",
                    flush=True,
                )
        trace_stages = _warm_trace(asr, env, state, args.audio, diarize=not args.no_diarize)
    finally:
        stop_mesh()

    imports = _import_times(env)
    _print(results, ready, imports, trace_stages, args)
    return 0


def _warm_trace(asr, env, state, audio, diarize: bool) -> dict[str, dict[str, float]]:
    """Stage durations of one warm request (with and without diarization), from its trace."""
    from asr_mesh.client import traces

    stages = {}
    for label, extra in (("without diarization", []), ("with --diarize", ["--diarize"]))[
        : 2 if diarize else 1
    ]:
        proc = subprocess.run(
            [
                *asr,
                "transcribe",
                str(audio),
                "-o",
                str(state / "out"),
                "--quiet",
                "--no-cache",
                *extra,
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        trace_id = proc.stderr.rsplit("(trace ", 1)[1].split(")")[0]
        time.sleep(1)  # server spans land a moment after the last response
        [trace] = traces.match_traces(state, trace_id)
        spans = {}
        for span in trace.spans:
            if span.service == "gateway" and (
                span.name.startswith("chain.")
                or span.name == "gateway.upload"
                or span.parent_span_id not in {s.span_id for s in trace.spans}
            ):
                name = (
                    span.name if span.name.startswith(("chain.", "gateway.")) else "gateway request"
                )
                spans[name] = (span.end_ns - span.start_ns) / 1e9
        stages[label] = spans
    return stages


def _import_times(env) -> dict[str, float]:
    """Wall time of `import asr_mesh.services.<name>.server` (and the CLI) in a fresh interpreter, median of 3."""
    found = {}
    for module in (
        "asr_mesh.client.cli",
        *(
            f"asr_mesh.services.{n}.server"
            for n in ("gateway", "preprocess", "transcription", "merge", "diarization")
        ),
    ):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", f"import {module}"],
                env=env,
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - started)
        found[module] = statistics.median(times)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", PRELOAD], env=env, cwd=REPO, check=True, capture_output=True
        )
        times.append(time.perf_counter() - started)
    found["the prefork template's preload (once per mesh)"] = statistics.median(times)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    found["(bare interpreter)"] = time.perf_counter() - started
    return found


def _print(results, ready, imports, trace_stages, args) -> None:
    console = Console(width=140)
    median = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "rss", "pss")}
        for name, runs in results.items()
    }
    plain = median["plain faster-whisper"]
    goals = {"asr cold": ("wall", 1.5), "asr warm": ("wall", 1.1)}
    table = Table(
        title=f"{args.audio.name}: medians of {args.runs} runs on {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    columns = ("variant", "wall s", "× plain", "CPU s", "peak PSS MB", "PSS × plain")
    for column in (*columns, "peak RSS MB", "RSS × plain", "goal"):
        table.add_column(column, justify="right")
    for name, m in median.items():
        goal = ""
        if name in goals:
            key, limit = goals[name]
            ok = m[key] / plain[key] <= limit
            goal = f"wall ≤ {limit}x {'met' if ok else 'MISSED'}"
            if name == "asr cold":
                pss_ok = m["pss"] / plain["pss"] <= 1.3
                goal += f"; memory (PSS) ≤ 1.3x {'met' if pss_ok else 'MISSED'}"
        table.add_row(
            name,
            f"{m['wall']:.2f}",
            f"{m['wall'] / plain['wall']:.2f}x",
            f"{m['cpu']:.1f}",
            f"{m['pss'] / 1e6:.0f}",
            f"{m['pss'] / plain['pss']:.2f}x",
            f"{m['rss'] / 1e6:.0f}",
            f"{m['rss'] / plain['rss']:.2f}x",
            goal,
        )
    console.print(table)

    where = Table(title="where the time goes")
    where.add_column("what")
    where.add_column("seconds", justify="right")
    for module, seconds in imports.items():
        where.add_row(
            module if module.startswith(("the", "(")) else f"import {module}", f"{seconds:.2f}"
        )
    for service in ("preprocess", "transcription", "merge", "gateway", "supervisor"):
        values = [r[service] for r in ready if service in r]
        if values:
            where.add_row(
                f"cold start: {service} spawn → ready (median)", f"{statistics.median(values):.2f}"
            )
    for label, spans in trace_stages.items():
        for span, seconds in spans.items():
            where.add_row(f"warm request {label}: {span}", f"{seconds:.2f}")
        if "gateway request" in spans:
            share = {
                k: v / spans["gateway request"] for k, v in spans.items() if k.startswith("chain.")
            }
            where.add_row(
                f"  shares {label}", ", ".join(f"{k[6:]} {v:.0%}" for k, v in share.items())
            )
    console.print(where)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(median)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    for ax, (key, label, scale) in zip(
        axes,
        (("wall", "wall time (s)", 1), ("cpu", "CPU time (s)", 1), ("pss", "peak PSS (MB)", 1e6)),
    ):
        values = [median[n][key] / scale for n in names]
        spread = [
            [median[n][key] / scale - min(r[key] for r in results[n]) / scale for n in names],
            [max(r[key] for r in results[n]) / scale - median[n][key] / scale for n in names],
        ]
        ax.bar(
            range(len(names)),
            values,
            yerr=spread,
            capsize=3,
            color=["#888"] + ["#3a7" if "warm" in n else "#37a" for n in names[1:]],
        )
        ax.set_xticks(
            range(len(names)),
            [n.replace("asr ", "").replace(" faster-whisper", "") for n in names],
            rotation=30,
            ha="right",
        )
        ax.set_title(label)
    limits = {"asr cold": 1.5, "asr warm": 1.1}
    for name, limit in limits.items():
        axes[0].hlines(
            plain["wall"] * limit,
            names.index(name) - 0.4,
            names.index(name) + 0.4,
            colors="r",
            linestyles="dashed",
        )
    axes[2].axhline(plain["pss"] / 1e6 * 1.3, color="r", linestyle="dashed", linewidth=0.8)
    fig.suptitle(
        f"{args.audio.name}: plain faster-whisper vs asr transcribe (median of {args.runs}; "
        "red: goals)"
    )
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    console.print(f"figure written to {args.png}")


if __name__ == "__main__":
    raise SystemExit(main())
