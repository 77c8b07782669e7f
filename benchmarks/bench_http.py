"""REST (the HTTP front door) vs gRPC (the SDK) on the same mesh, same clip, same run.

    .venv/bin/python benchmarks/bench_http.py [--audio ../shared/corpus-dev/dia/conv0.flac]
        [--runs 3] [--png build/bench_http.png]

Starts one local mesh (separate processes, no diarization) with the HTTP service in front of
its gateway, then, interleaved run by run (the order rotated each run) so that machine load
hits every path alike:

- gRPC: `GatewayClient.transcribe` (asr_mesh.client.sdk), JSON document;
- REST: `POST /v1/audio/transcriptions` with httpx (multipart, response_format=json);
- REST (openai): the official `openai` client, the same request.

Each first with the result cache bypassed (`no_cache`: the whole chain runs; the ~30 s clip is
what the ratio is quoted on), then answered by the result cache (the chain skipped, so what is
left is mostly the front door's own cost: multipart parsing, spooling, the second hop). Prints
medians and the REST/gRPC ratio; saves a bar chart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import httpx  # noqa: E402
import openai  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from asr_mesh.client.sdk import GatewayClient, TranscribeOptions  # noqa: E402
from asr_mesh.services.supervisor import WITHOUT_DIARIZATION, LocalMesh  # noqa: E402

CORPUS = Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev"))


def timed(fn) -> tuple[float, str]:
    started = time.perf_counter()
    text = fn()
    return time.perf_counter() - started, text


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--audio", type=Path, default=CORPUS / "dia" / "conv0.flac")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--png", type=Path, default=REPO / "build" / "bench_http.png")
    args = parser.parse_args()
    console = Console()
    audio = args.audio.resolve()
    data = audio.read_bytes()

    with (
        tempfile.TemporaryDirectory(prefix="bench-http-") as state,
        LocalMesh(state_dir=Path(state), services=WITHOUT_DIARIZATION, http_port=0) as mesh,
    ):
        base = f"http://{mesh.http_address}"
        grpc_client = GatewayClient(mesh.gateway_address)
        rest = httpx.Client(base_url=base, timeout=600)
        oa = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)

        def via_grpc(no_cache: bool) -> str:
            result = grpc_client.transcribe(
                audio, TranscribeOptions(formats=("json",), no_cache=no_cache)
            )
            return " ".join(s.text for s in result.segments)

        def via_rest(no_cache: bool) -> str:
            r = rest.post(
                "/v1/audio/transcriptions",
                files={"file": (audio.name, data, "audio/flac")},
                data={
                    "model": "whisper-1",
                    "response_format": "json",
                    "no_cache": str(no_cache).lower(),
                },
            )
            r.raise_for_status()
            return r.json()["text"]

        def via_openai(no_cache: bool) -> str:
            return oa.audio.transcriptions.create(
                model="whisper-1",
                file=(audio.name, data),
                extra_body={"no_cache": str(no_cache).lower()},
            ).text

        paths = {
            "gRPC (SDK)": via_grpc,
            "REST (httpx)": via_rest,
            "REST (openai client)": via_openai,
        }
        console.print(
            f"mesh up (gateway {mesh.gateway_address}, http {mesh.http_address}); warm-up run"
        )
        via_grpc(False)  # loads the model's first windows and fills the cache
        times: dict[tuple[str, str], list[float]] = {}
        texts: dict[str, str] = {}
        for mode, no_cache in (("chain runs (no_cache)", True), ("cache hit", False)):
            for run in range(args.runs):
                names = list(paths)
                names = (
                    names[run % len(names) :] + names[: run % len(names)]
                )  # rotate: no order bias
                for name in names:
                    fn = paths[name]
                    seconds, text = timed(lambda fn=fn, no_cache=no_cache: fn(no_cache))
                    times.setdefault((mode, name), []).append(seconds)
                    texts[name] = text
                    console.print(f"  {mode:22} run {run + 1}: {name:21} {seconds:7.3f} s")
        grpc_client.close()

    same = len(set(texts.values())) == 1
    table = Table(
        title=f"REST vs gRPC on {audio.name} ({len(data) / 1e6:.2f} MB), medians of {args.runs}"
    )
    for column in ("mode", "path", "median s", "min s", "max s", "vs gRPC"):
        table.add_column(column, justify="left" if column in ("mode", "path") else "right")
    for mode in ("chain runs (no_cache)", "cache hit"):
        reference = statistics.median(times[(mode, "gRPC (SDK)")])
        for name in paths:
            values = times[(mode, name)]
            median = statistics.median(values)
            ratio = f"{median / reference:.3f}x ({(median - reference) * 1000:+.0f} ms)"
            table.add_row(
                mode, name, f"{median:.3f}", f"{min(values):.3f}", f"{max(values):.3f}", ratio
            )
    console.print(table)
    console.print(f"same transcript text on every path: {same}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("chain runs (no_cache)", "cache hit")):
        medians = [statistics.median(times[(mode, n)]) for n in paths]
        ax.bar(range(len(paths)), medians, color=["#4c72b0", "#dd8452", "#55a868"])
        ax.set_xticks(range(len(paths)), [n.replace(" (", "\n(") for n in paths])
        ax.set_title(mode)
        ax.set_ylabel("seconds (median)")
    fig.suptitle(f"REST front door vs gRPC, {audio.name}")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    console.print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
