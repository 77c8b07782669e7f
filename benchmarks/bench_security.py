"""What TLS, tokens, caps and the spool quota cost and what they stop, on this machine.

1. Per-request cost of security on the gateway (in process, downstream stages faked so only
   the gateway's own work is timed): the same 1 MiB upload over plaintext, TLS, TLS + token,
   and TLS + token on a new connection per request (a full handshake each time).
2. The issue's direct call to the transcription service (beam 20, best_of 20, 11
   temperatures, a 5,000-character prompt on 6.9 s of audio; it held the only worker 86 s):
   time until it is refused now.
3. An upload of no declared size against the gateway's spool quota: where it is cut.

    .venv/bin/python benchmarks/bench_security.py [--requests 50] [--png build/bench_security.png]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gateway"))
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402

from asr.common.v1 import audio_pb2  # noqa: E402
from asr.gateway.v1 import gateway_service_pb2 as pb  # noqa: E402
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc  # noqa: E402
from asr.transcription.v1 import transcription_service_pb2 as tr_pb  # noqa: E402
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc  # noqa: E402
from asr_mesh.client.sdk import GatewayClient, TranscribeOptions  # noqa: E402
from asr_mesh.services.common.local_ca import ensure_local_tls  # noqa: E402

UPLOAD_BYTES = 1 << 20
PCM16K = audio_pb2.PcmFormat(
    sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def gateway(work: Path, tls=None, tokens: Path | None = None, quota: int | None = None):
    from fakes import FakeStages

    from asr_mesh.services.gateway.server import GatewaySettings, create_server

    extra = {}
    if tls:
        extra.update(tls_cert_file=tls.cert, tls_key_file=tls.key)
    if tokens:
        extra.update(auth_token_file=tokens)
    if quota:
        extra.update(spool_quota_bytes=quota)
    spool = Path(tempfile.mkdtemp(dir=work))
    settings = GatewaySettings(port=0, spool_dir=spool, cache_enabled=False, **extra)
    return create_server(settings, stages_factory=FakeStages)


def part_overhead(work: Path, requests: int) -> list[dict]:
    tls = ensure_local_tls(work / "tls")
    tokens = work / "tokens"
    tokens.write_text("bench-token bench\n")
    upload = work / "upload.bin"
    upload.write_bytes(os.urandom(UPLOAD_BYTES))
    rows = []
    modes = [
        ("plaintext", None, None, None, False),
        ("TLS", tls, None, None, False),
        ("TLS + token", tls, tokens, "bench-token", False),
        ("TLS + token, new connection each", tls, tokens, "bench-token", True),
    ]
    for name, server_tls, token_file, token, fresh in modes:
        handle = gateway(work, server_tls, token_file)
        kwargs = {"ca_cert": tls.ca, "token": token} if server_tls else {}
        try:
            client = GatewayClient(handle.address, **kwargs)
            client.transcribe(upload, TranscribeOptions(), timeout_s=30)  # warm: connection, caches
            seconds = []
            for _ in range(requests):
                if fresh:
                    client.close()
                    client = GatewayClient(handle.address, **kwargs)
                started = time.perf_counter()
                client.transcribe(upload, TranscribeOptions(), timeout_s=30)
                seconds.append(time.perf_counter() - started)
            client.close()
        finally:
            handle.stop(0)
        rows.append(
            {
                "mode": name,
                "mean_ms": 1000 * statistics.mean(seconds),
                "p50_ms": 1000 * percentile(seconds, 0.5),
                "p95_ms": 1000 * percentile(seconds, 0.95),
                "mb_s": UPLOAD_BYTES / statistics.mean(seconds) / 1e6,
            }
        )
    return rows


def part_direct_call(repeats: int) -> dict:
    from conftest import MODELS_DIR

    from asr_mesh.services.transcription.server import TranscriptionSettings, create_server

    handle = create_server(
        TranscriptionSettings(
            port=0, models_dir=MODELS_DIR, preload=False, cpu_threads=1, device="cpu"
        )
    )
    pcm = b"\0\0" * int(16000 * 6.9)

    def requests():
        yield tr_pb.TranscribeRequest(
            config=tr_pb.TranscriptionConfig(
                format=PCM16K,
                beam_size=20,
                best_of=20,
                temperatures=[0.1 * n for n in range(11)],
                initial_prompt="p" * 5000,
                pcm_size_bytes=len(pcm),
            )
        )
        yield tr_pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=pcm))

    seconds, codes, details = [], set(), ""
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = tr_grpc.TranscriptionServiceStub(channel)
            for _ in range(repeats):
                started = time.perf_counter()
                try:
                    list(stub.Transcribe(requests(), timeout=120))
                    codes.add("OK")
                except grpc.RpcError as err:
                    codes.add(err.code().name)
                    details = err.details()
                seconds.append(time.perf_counter() - started)
    finally:
        handle.stop(0)
    return {
        "codes": sorted(codes),
        "median_ms": 1000 * statistics.median(seconds),
        "max_ms": 1000 * max(seconds),
        "details": details,
    }


def part_quota(work: Path, quota: int, sent: int) -> dict:
    handle = gateway(work, quota=quota)
    piece = b"x" * (256 << 10)

    def requests():
        yield pb.TranscribeRequest(
            config=pb.TranscribeConfig(filename="big.bin")
        )  # no declared size
        for _ in range(sent // len(piece)):
            yield pb.TranscribeRequest(content=piece)

    started = time.perf_counter()
    try:
        with grpc.insecure_channel(handle.address) as channel:
            try:
                list(pb_grpc.GatewayServiceStub(channel).Transcribe(requests(), timeout=120))
                outcome, cut = "OK", sent
            except grpc.RpcError as err:
                outcome = err.code().name
                found = re.search(r"cut after (\d+) bytes", err.details())
                cut = int(found.group(1)) if found else -1
    finally:
        handle.stop(0)
    return {
        "quota": quota,
        "sent": sent,
        "outcome": outcome,
        "cut_at": cut,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--png", type=Path, default=REPO / "build" / "bench_security.png")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # each refusal would log a line: the tables say it
    os.environ.setdefault("ASR_STATE_DIR", tempfile.mkdtemp(prefix="bench-security-"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = part_overhead(work, args.requests)
        print(
            f"\n1. gateway, {UPLOAD_BYTES >> 20} MiB upload, fake downstream, {args.requests} sequential requests"
        )
        print(f"{'mode':36} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'MB/s':>7}")
        for r in rows:
            print(
                f"{r['mode']:36} {r['mean_ms']:8.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['mb_s']:7.1f}"
            )
        direct = part_direct_call(20)
        print(
            "\n2. the issue's direct call to transcription (beam 20, best_of 20, 11 temperatures, "
            "5,000-char prompt, 6.9 s audio), 20 times"
        )
        print(
            f"status {','.join(direct['codes'])}; median {direct['median_ms']:.1f} ms, max "
            f"{direct['max_ms']:.1f} ms until refused (the issue: held the only worker 86 s)"
        )
        print(f'  "{direct["details"]}"')
        quota = part_quota(work, 64 << 20, 256 << 20)
        print("\n3. upload of no declared size against the spool quota")
        print(
            f"quota {quota['quota'] >> 20} MiB, client offered {quota['sent'] >> 20} MiB: {quota['outcome']}, "
            f"cut after {quota['cut_at'] / (1 << 20):.2f} MiB in {quota['seconds']:.2f} s"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [r["mode"] for r in rows]
    ax.barh(names, [r["mean_ms"] for r in rows], color="#4c72b0", label="mean")
    ax.scatter([r["p95_ms"] for r in rows], names, color="#dd8452", zorder=3, label="p95")
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per request ({UPLOAD_BYTES >> 20} MiB upload, gateway only)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"\nfigure: {args.png}")


if __name__ == "__main__":
    main()
