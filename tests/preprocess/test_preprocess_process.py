"""The preprocess service as a real process (`python -m asr_mesh.services.preprocess`), as deployed.

Memory is measured on the service's process and its decoder children through /proc, so these
tests see what an operator would: bombs refused fast with the service staying small, health
answered while a decoder hangs or crashes, nothing left in the spool after SIGTERM.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asr.preprocess.v1 import preprocess_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.errors import InvalidAudio, LimitExceeded, from_rpc_error
from asr_mesh.services.preprocess.server import ESTIMATE_RTF_DEFAULT
from benchmarks.bench_preprocess import (
    ServiceProcess,
    TreeSampler,
    children_of,
    peak_rss_bytes,
    preprocess_requests,
    rss_bytes,
)

pytestmark = pytest.mark.grpc

SERVICE = "asr.preprocess.v1.PreprocessService"
MEMORY_CEILING = 300 << 20
REFUSAL_SECONDS = 5.0


def fake_ffmpeg(path: Path) -> Path:
    """An ffmpeg that misbehaves by the spooled file's extension, else runs the real one.

    Children get no PATH, hence the absolute paths. `.hang` never ends, `.crash` dies of
    SIGSEGV after three seconds, `.stall` writes some PCM and then hangs (a decode in progress).
    """
    real, head, sleep = shutil.which("ffmpeg"), shutil.which("head"), shutil.which("sleep")
    path.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  *upload.hang*) exec {sleep} 60 ;;\n"
        f"  *upload.crash*) {sleep} 3; kill -SEGV $$ ;;\n"
        f"  *upload.stall*) {head} -c 640000 /dev/zero; exec {sleep} 60 ;;\n"
        f'  *) exec {real} "$@" ;;\n'
        "esac\n"
    )
    path.chmod(0o755)
    return path


class Running:
    """A service process with a channel, stub and health stub."""

    def __init__(self, root: Path, **env: str):
        self.spool = root / "spool"
        self.state = root / "state"
        self.service = ServiceProcess(self.spool, self.state, **env)
        self.channel = grpc.insecure_channel(self.service.address)
        self.stub = pb_grpc.PreprocessServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def serving(self, timeout: float = 1.0) -> bool:
        reply = self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def spool_empty(self, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while any(self.spool.iterdir()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.channel.close()
        self.service.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("service")
    srv = Running(
        root,
        ASR_PREPROCESS_FFMPEG_PATH=str(fake_ffmpeg(root / "ffmpeg")),
        OTEL_TRACES_EXPORTER="file",
    )
    yield srv
    srv.close()


def call(srv: Running, path: Path, filename: str = "", timeout: float = 60, **config):
    """Run one call; return (responses, error or None)."""
    responses = []
    try:
        for response in srv.stub.Preprocess(
            preprocess_requests(path, **config)
            if not filename
            else _renamed(path, filename, **config),
            timeout=timeout,
        ):
            responses.append(response)
    except grpc.RpcError as err:
        return responses, err
    return responses, None


def _renamed(path: Path, filename: str, **config):
    first, *rest = preprocess_requests(path, **config)
    first.config.filename = filename
    yield first
    yield from rest


# --------------------------------------------------------------------------- bombs


def _wav(rate: int, byte_rate: int, data_size: int, body: int, riff: int | None = None) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, rate, byte_rate, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + body if riff is None else riff)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
        + bytes(body)
    )


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, tuple[Path, type, str]]:
    """name → (file, expected error type, words the refusal must contain)."""
    out = tmp_path_factory.mktemp("bombs")
    minute = out / "minute.opus"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "60",
            "-c:a",
            "libopus",
            "-b:a",
            "6k",
            str(minute),
        ],
        check=True,
        timeout=60,
    )
    hours = out / "five_hours.opus"  # 6.8 MB that decode to 5 h (1.1 GB of PCM)
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-stream_loop",
            "299",
            "-i",
            str(minute),
            "-c",
            "copy",
            str(hours),
        ],
        check=True,
        timeout=60,
    )
    flac = out / "lying.flac"  # 15 min of audio whose STREAMINFO claims 2 s
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "900",
            "-c:a",
            "flac",
            str(flac),
        ],
        check=True,
        timeout=60,
    )
    data = bytearray(flac.read_bytes())
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = ((packed & ~((1 << 36) - 1)) | 16_000).to_bytes(8, "big")
    flac.write_bytes(bytes(data))
    files = {
        "opus_five_hours": (hours, LimitExceeded, "declares 5.0 h"),
        "lying_flac": (flac, InvalidAudio, "decompression bomb"),
    }
    wavs = {
        # 37 hours declared in the header, 32 KB sent.
        "wav_huge_length": (
            _wav(16_000, 32_000, 0xFFFFFF00, 32_000, riff=0xFFFFFFF0),
            LimitExceeded,
            "WAV header declares 37.3 h",
        ),
        # "Recorded" at 1 Hz with a streaming-placeholder length: resampling 1 MiB of it to
        # 16 kHz would write 16 GiB of PCM.
        "wav_forged_rate_1hz": (
            _wav(1, 2, 0xFFFFFFFF, 1 << 20, riff=0xFFFFFFFF),
            InvalidAudio,
            "sample rate of 1 Hz",
        ),
        # A rate of 2^31-1 Hz: soxr spends seconds of CPU per kilobyte on it.
        "wav_forged_rate_huge": (
            _wav(0x7FFFFFFF, 0xFFFFFFFE, 1 << 20, 1 << 20),
            InvalidAudio,
            "sample rate of 2147483647 Hz",
        ),
    }
    for name, (content, error, words) in wavs.items():
        path = out / f"{name}.wav"
        path.write_bytes(content)
        files[name] = (path, error, words)
    return files


@pytest.mark.parametrize(
    "name",
    [
        "opus_five_hours",
        "lying_flac",
        "wav_huge_length",
        "wav_forged_rate_1hz",
        "wav_forged_rate_huge",
    ],
)
def test_bombs_are_refused_within_5s_and_the_service_stays_under_300mb(running, bombs, name):
    path, error, words = bombs[name]
    with TreeSampler(running.service.pid, interval=0.01) as sampler:
        started = time.monotonic()
        responses, err = call(running, path)
        elapsed = time.monotonic() - started
    assert err is not None, f"{name} was accepted ({len(responses)} responses)"
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(from_rpc_error(err), error) and words in err.details(), err.details()
    assert elapsed < REFUSAL_SECONDS, f"{name} took {elapsed:.1f} s to refuse"
    # The sampler sees the service and its ffmpeg together; VmHWM is the service's own peak
    # over its whole life, so it also covers moments between samples.
    assert sampler.peak_total < MEMORY_CEILING, f"{sampler.peak_total >> 20} MiB"
    assert peak_rss_bytes(running.service.pid) < MEMORY_CEILING
    assert running.spool_empty(wait=2)


# --------------------------------------------------------------------------- health


def _poll_health(srv: Running, until: threading.Event | None = None, count: int = 0) -> list[bool]:
    """Health answers, 0.1 s apart, until `until` is set and at least `count` have come.

    Counted rather than timed, and each check given 5 s: a runner that stalls for a second
    must not look like a service that stopped answering.
    """
    answers: list[bool] = []
    while (until is not None and not until.is_set()) or len(answers) < count:
        try:
            answers.append(srv.serving(timeout=5.0))
        except grpc.RpcError:
            answers.append(False)
        time.sleep(0.1)
    return answers


def test_health_is_answered_throughout_a_hanging_decode(running, corpus):
    call_ = running.stub.Preprocess(_renamed(corpus / "media/clip.ogg", "clip.hang"), timeout=60)
    first = next(call_)
    assert first.WhichOneof("payload") == "media_info"  # probed, now "decoding" forever
    answers = _poll_health(running, count=10)  # the decoder hangs for 60 s: all come meanwhile
    assert all(answers), answers
    assert [c for c in children_of(running.service.pid)], "the hanging decoder should be running"
    call_.cancel()
    assert running.spool_empty(wait=5)
    deadline = time.monotonic() + 5
    while children_of(running.service.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children_of(running.service.pid) == []
    assert running.serving()


def test_health_is_answered_while_a_decoder_crashes(running, corpus):
    done, result = threading.Event(), {}

    def work() -> None:
        result["call"] = call(running, corpus / "media/clip.ogg", filename="clip.crash")
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    answers = _poll_health(running, done)
    worker.join()
    _, err = result["call"]
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "crashed" in err.details() and "SIGSEGV" in err.details()
    assert len(answers) >= 2 and all(answers), answers  # ~30 on an idle machine
    assert running.serving() and running.spool_empty(wait=2)


# --------------------------------------------------------------------------- estimate and spans


def test_media_info_carries_an_estimate_and_the_decode_is_traced(running, corpus):
    responses, err = call(running, corpus / "asr/000.flac")
    assert err is None
    info = responses[0].media_info
    declared = info.duration.seconds + info.duration.nanos / 1e9
    estimate = info.estimated_processing.seconds + info.estimated_processing.nanos / 1e9
    assert info.HasField("estimated_processing")
    assert estimate == pytest.approx(declared * ESTIMATE_RTF_DEFAULT, abs=1e-3)

    spans: dict[str, dict] = {}
    deadline = time.monotonic() + 5
    while "preprocess.decode" not in spans and time.monotonic() < deadline:
        records = [
            json.loads(line)
            for trace_file in (running.state / "traces").glob("preprocess-*.jsonl")
            for line in trace_file.read_text().splitlines()
        ]
        ours = [
            r
            for r in records
            if r["name"] == "preprocess.decode"
            and abs(r["attributes"].get("asr.audio.duration_s", -1) - declared) < 0.02
        ]
        if ours:
            spans = {r["name"]: r for r in records if r["trace_id"] == ours[-1]["trace_id"]}
        time.sleep(0.1)
    decode = spans["preprocess.decode"]["attributes"]
    assert decode["asr.audio.duration_s"] == pytest.approx(declared, abs=0.02)
    assert decode["asr.media.container"] == "flac" and decode["asr.media.codec"] == "flac"
    assert 0 < decode["asr.rtf"] < 1
    assert spans["preprocess.probe"]["attributes"][
        "asr.audio.declared_duration_s"
    ] == pytest.approx(declared)
    parent = spans["preprocess.decode"]["parent_span_id"]
    assert (
        parent and parent == spans["preprocess.probe"]["parent_span_id"]
    )  # both under the RPC span


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_mid_decode_exits_0_and_leaves_the_spool_empty(tmp_path, corpus):
    srv = Running(
        tmp_path,
        ASR_PREPROCESS_FFMPEG_PATH=str(fake_ffmpeg(tmp_path / "ffmpeg")),
        ASR_PREPROCESS_GRACE_PERIOD_S="1",
    )
    try:
        responses = srv.stub.Preprocess(
            _renamed(corpus / "media/clip.ogg", "clip.stall"), timeout=60
        )
        kinds = [next(responses).WhichOneof("payload"), next(responses).WhichOneof("payload")]
        assert kinds == ["media_info", "audio"]  # PCM is flowing, the decoder still running
        assert any(srv.spool.iterdir()) and children_of(srv.service.pid)
        srv.service.process.send_signal(signal.SIGTERM)
        assert srv.service.process.wait(timeout=20) == 0
        assert not any(srv.spool.iterdir()), list(srv.spool.rglob("*"))
        with pytest.raises(grpc.RpcError):
            for _ in responses:
                pass
    finally:
        srv.close()


# --------------------------------------------------------------------------- memory while streaming


def test_a_long_decode_streams_without_the_service_growing(running, corpus, manifest):
    """10 minutes (19 MB of PCM) pass through; the service holds chunks, never the whole."""
    path = corpus / manifest["long"][0]["audio"]
    running.serving()
    before = rss_bytes(running.service.pid)
    received = 0
    with TreeSampler(running.service.pid, interval=0.01) as sampler:
        for response in running.stub.Preprocess(preprocess_requests(path), timeout=120):
            received += len(response.audio.pcm)
    assert received > 18 << 20
    growth = sampler.peak_self - before
    print(
        f"service before {before >> 20} MiB, service peak {sampler.peak_self >> 20} MiB, "
        f"with decoder {sampler.peak_total >> 20} MiB, decoder peak {sampler.peak_children >> 20} MiB"
    )
    assert sampler.peak_total < MEMORY_CEILING
    # Holding the PCM would grow it by at least the 18 MiB sent; chunks in flight cost a few.
    assert growth < 16 << 20, f"grew {growth >> 20} MiB for {received >> 20} MiB of PCM"
