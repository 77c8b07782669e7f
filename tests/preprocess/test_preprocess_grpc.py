"""A real preprocess server in process, real ffmpeg, the development corpus."""

from __future__ import annotations

import http.server
import os
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import channel_to
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from asr.preprocess.v1 import preprocess_service_pb2 as pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.errors import InvalidAudio, LimitExceeded, from_rpc_error
from asr_mesh.services.preprocess.server import (
    PreprocessSettings,
    build_preprocessor,
    create_server,
)

pytestmark = pytest.mark.grpc

UPLOAD_CHUNK = 256 * 1024
SERVICE = "asr.preprocess.v1.PreprocessService"


class Server:
    """A started server with its own spool directory and a stub."""

    def __init__(self, spool: Path, **settings):
        self.spool = spool
        config = PreprocessSettings(port=0, temp_dir=spool, **settings)
        self.preprocessor = build_preprocessor(config)
        self.handle = create_server(config, self.preprocessor)
        self.channel = channel_to(self.handle.port)
        self.stub = pb_grpc.PreprocessServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.handle.stop(0)

    def serving(self) -> bool:
        reply = self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def spool_empty(self, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if not any(self.spool.iterdir()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def requests(data: bytes, filename: str = "", **config) -> Iterator[pb.PreprocessRequest]:
    yield pb.PreprocessRequest(config=pb.PreprocessConfig(filename=filename, **config))
    for offset in range(0, len(data), UPLOAD_CHUNK):
        yield pb.PreprocessRequest(content=data[offset : offset + UPLOAD_CHUNK])


def preprocess(server: Server, data: bytes, filename: str = "", **config):
    """Run one call; return (media_info, pcm bytes, chunk sizes, summary)."""
    info, pcm, sizes, summary = None, bytearray(), [], None
    responses = list(server.stub.Preprocess(requests(data, filename, **config), timeout=60))
    assert responses[0].WhichOneof("payload") == "media_info"
    assert responses[-1].WhichOneof("payload") == "summary"
    info, summary = responses[0].media_info, responses[-1].summary
    for response in responses[1:-1]:
        assert response.WhichOneof("payload") == "audio"
        pcm += response.audio.pcm
        sizes.append(len(response.audio.pcm))
    return info, bytes(pcm), sizes, summary


def refusal(server: Server, data: bytes, filename: str = "", **config) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        for _ in server.stub.Preprocess(requests(data, filename, **config), timeout=60):
            pass
    return caught.value


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("spool"))
    yield srv
    srv.close()


@pytest.fixture()
def make_server(tmp_path) -> Iterator:
    made: list[Server] = []

    def make(**settings) -> Server:
        srv = Server(tmp_path / f"spool{len(made)}", **settings)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.close()


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def reference_seconds(corpus: Path, item: str) -> float:
    """The true length: the lossless WAV each media clip was made from, or the file itself."""
    name = Path(item).name
    if name.startswith(("silence", "noise")):
        return wav_seconds(corpus / item)
    return wav_seconds(corpus / "media" / "clip.wav")


# --------------------------------------------------------------------------- good media


def test_every_corpus_media_file_decodes_to_the_right_length(server, corpus, manifest):
    for item in manifest["media"]:
        path = corpus / item["audio"]
        info, pcm, sizes, summary = preprocess(server, path.read_bytes(), path.name)
        seconds = len(pcm) / 32_000
        assert abs(seconds - reference_seconds(corpus, item["audio"])) <= 0.020, path.name
        assert info.size_bytes == path.stat().st_size and info.codec and info.sample_rate_hz > 0
        assert info.has_video == path.name.endswith(".mp4")
        assert summary.pcm_bytes == len(pcm) and summary.format.sample_rate_hz == 16_000
        assert summary.format.channels == 1
        assert all(64 * 1024 <= s <= 1 << 20 for s in sizes[:-1]) and 0 < sizes[-1] <= 1 << 20
        assert server.spool_empty(), f"spool not cleaned after {path.name}"


def test_stereo_is_downmixed_and_resampled(server, corpus):
    info, pcm, _, _ = preprocess(server, (corpus / "media/clip_48k_stereo.flac").read_bytes())
    assert (info.sample_rate_hz, info.channels) == (48_000, 2)
    _, reference, _, _ = preprocess(server, (corpus / "media/clip.wav").read_bytes())
    a, b = (np.frombuffer(x, "<i2").astype(np.float64) for x in (pcm, reference))
    assert len(a) == len(b) and np.corrcoef(a, b)[0, 1] > 0.99  # same speech, mono, 16 kHz


def test_16k_mono_pcm_is_byte_identical_to_faster_whisper(server, corpus, manifest):
    audio = pytest.importorskip("faster_whisper.audio")
    items = [manifest["asr"][0]["audio"], manifest["asr"][3]["audio"], manifest["dia"][0]["audio"]]
    for item in items:
        _, pcm, _, _ = preprocess(server, (corpus / item).read_bytes(), Path(item).name)
        expected = (audio.decode_audio(str(corpus / item)) * 32768.0).astype("<i2").tobytes()
        assert pcm == expected, item


def test_chunk_size_is_honoured(server, corpus):
    _, pcm, sizes, _ = preprocess(
        server, (corpus / "media/noise_10s.wav").read_bytes(), chunk_size_bytes=100_000
    )
    assert sizes == [100_000] * 3 + [20_000] and len(pcm) == 320_000


def test_finished_work_is_counted_in_the_metrics(server, corpus):
    from asr_mesh.services.common.metrics import REGISTRY

    def audio_seconds() -> float:
        return (
            REGISTRY.get_sample_value(
                "asr_audio_processed_seconds_total", {"service": "preprocess"}
            )
            or 0.0
        )

    before = audio_seconds()
    preprocess(server, (corpus / "media/noise_10s.wav").read_bytes())
    assert audio_seconds() - before == pytest.approx(10.0, abs=0.02)
    assert REGISTRY.get_sample_value("asr_real_time_factor_count", {"service": "preprocess"}) >= 1


def test_loudness_normalization_raises_a_quiet_file(server, corpus):
    data = (corpus / "media/clip_quiet.wav").read_bytes()
    _, plain, _, _ = preprocess(server, data)
    _, louder, _, _ = preprocess(server, data, loudness_normalization=True)
    rms = [
        np.sqrt(np.mean(np.frombuffer(x, "<i2").astype(np.float64) ** 2)) for x in (plain, louder)
    ]
    assert rms[1] > 3 * rms[0]
    assert abs(len(louder) - len(plain)) <= 0.020 * 32_000


def test_trim_silence_cuts_both_ends(server, corpus, tmp_path):
    _, speech, _, _ = preprocess(server, (corpus / "asr/000.flac").read_bytes())
    padded = bytes(32_000) + speech + bytes(48_000)  # 1 s before, 1.5 s after
    path = tmp_path / "padded.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000), w.writeframes(padded)
    _, untrimmed, _, _ = preprocess(server, path.read_bytes())
    _, trimmed, _, _ = preprocess(server, path.read_bytes(), trim_silence=True)
    assert untrimmed == padded
    samples = np.frombuffer(padded, "<i2").astype(np.int32)
    loud = np.flatnonzero(np.abs(samples) > int(32768 * 10 ** (-50 / 20)))
    pad = 1_600  # 0.1 s kept each side
    assert trimmed == padded[(loud[0] - pad) * 2 : (loud[-1] + 1 + pad) * 2]
    assert len(trimmed) < len(padded) - 2.5 * 32_000


# --------------------------------------------------------------------------- bad input

EXPECTED = {
    "empty.wav": "the file is empty",
    "random.mp3": "not a recognised audio or video format",
    "text.wav": "not in a recognised audio or video format",
    "truncated.mp3": "the file is truncated or corrupt",
    "header_only.wav": "the file is truncated or corrupt",
    "playlist.m3u8": "HLS playlist",
    "concat.txt": "concat list",
    "video_no_audio.mp4": "no audio stream found",
}


def test_every_bad_file_is_refused_with_a_sentence(server, corpus, manifest):
    assert {Path(i["audio"]).name for i in manifest["bad"]} == set(EXPECTED)
    for item in manifest["bad"]:
        path = corpus / item["audio"]
        err = refusal(server, path.read_bytes(), path.name)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, path.name
        assert EXPECTED[path.name] in err.details(), (path.name, err.details())
        assert "/" not in err.details() and "Traceback" not in err.details()
        assert isinstance(from_rpc_error(err), InvalidAudio)
        assert server.spool_empty(), path.name
        assert server.serving()
    preprocess(server, (corpus / "media/clip.ogg").read_bytes())  # still decoding afterwards


def test_truncated_and_corrupted_copies_of_good_files_are_refused(server, corpus):
    cases = {
        "half.flac": (corpus / "asr/000.flac").read_bytes()[:40_000],
        "half.wav": (corpus / "media/clip.wav").read_bytes()[:400_000],
        "half.mp3": (corpus / "media/clip.mp3").read_bytes()[:20_000],
        "half.m4a": (corpus / "media/clip.m4a").read_bytes()[:20_000],
    }
    damaged = bytearray((corpus / "media/clip.mp3").read_bytes())
    damaged[15_000:23_000] = bytes(8_000)
    cases["zeroed.mp3"] = bytes(damaged)
    for name, data in cases.items():
        err = refusal(server, data, name)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "truncated or corrupt" in err.details(), (name, err.details())
        assert server.spool_empty(), name


def test_upload_of_another_size_than_declared_is_refused_before_decoding(server, corpus):
    data = (corpus / "media/clip.wav").read_bytes()
    err = refusal(server, data[:100_000], "clip.wav", upload_size_bytes=len(data))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"upload ended after 100000 of the {len(data)} bytes declared" in err.details()
    err = refusal(server, data, "clip.wav", upload_size_bytes=100_000)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "upload is longer than the 100000 bytes declared" in err.details()
    assert server.spool_empty()
    info, pcm, _, _ = preprocess(server, data, "clip.wav", upload_size_bytes=len(data))
    assert info.size_bytes == len(data) and pcm


class Canary:
    """An HTTP server on loopback that counts every request it gets."""

    def __init__(self):
        self.hits: list[str] = []
        canary = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                canary.hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"x" * 1000)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


def playlist(url: str) -> bytes:
    return (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{url}/segment0.ts\n#EXTINF:10.0,\n{url}/segment1.mp3\n"
        "#EXT-X-ENDLIST\n"
    ).encode()


def test_canary_control_plain_ffprobe_does_follow_the_playlist(canary, tmp_path):
    """Proves the canary can catch a leak: ffprobe without our whitelists fetches the segment."""
    path = tmp_path / "playlist.m3u8"
    path.write_bytes(playlist(canary.url))
    subprocess.run(
        ["ffprobe", "-v", "quiet", "-protocol_whitelist", "file,http,tcp", str(path)],
        timeout=30,
        check=False,
    )
    assert canary.hits


def test_playlists_and_concat_lists_read_nothing(server, canary):
    uploads = {
        "playlist.m3u8": playlist(canary.url),
        "list.txt": f"ffconcat version 1.0\nfile '{canary.url}/a.wav'\n".encode(),
        "stream.mp3": playlist(canary.url),  # a misleading name changes nothing
    }
    errors = {name: refusal(server, data, name) for name, data in uploads.items()}
    time.sleep(0.2)
    assert canary.hits == []
    for name, err in errors.items():
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "refuses" in err.details(), err.details()
    assert server.spool_empty()


# --------------------------------------------------------------------------- cleanup


def ffmpeg_children() -> list[int]:
    """Pids of ffmpeg/ffprobe processes this test process started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split()
        except OSError:
            continue
        if fields[1] in ("(ffmpeg)", "(ffprobe)") and int(fields[3]) == os.getpid():
            found.append(int(fields[0]))
    return found


def test_cancelling_mid_upload_leaves_nothing_behind(server, corpus):
    data = (corpus / "media/clip.wav").read_bytes()
    release = threading.Event()

    def stalled() -> Iterator[pb.PreprocessRequest]:
        yield pb.PreprocessRequest(config=pb.PreprocessConfig(filename="clip.wav"))
        yield pb.PreprocessRequest(content=data[:UPLOAD_CHUNK])
        release.wait(10)

    call = server.stub.Preprocess(stalled(), timeout=30)
    deadline = time.monotonic() + 5
    while not any(server.spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any(server.spool.iterdir()), "the upload never reached the spool"
    call.cancel()
    release.set()
    assert server.spool_empty(wait=5)
    assert server.serving()


def test_cancelling_mid_decode_kills_ffmpeg_and_cleans_up(server, corpus, manifest):
    data = (corpus / manifest["long"][0]["audio"]).read_bytes()
    call = server.stub.Preprocess(
        requests(data, "long.flac", loudness_normalization=True), timeout=60
    )
    kinds = []
    for response in call:
        kinds.append(response.WhichOneof("payload"))
        if kinds[-1] == "audio":
            break
    assert kinds[:2] == ["media_info", "audio"]
    assert ffmpeg_children(), "ffmpeg should still be decoding the 10-minute file"
    call.cancel()
    assert server.spool_empty(wait=5)
    deadline = time.monotonic() + 5
    while ffmpeg_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ffmpeg_children() == []


def test_protocol_errors(server):
    err = refusal(server, b"")  # config only, no content
    assert "the file is empty" in err.details()

    def content_first():
        yield pb.PreprocessRequest(content=b"RIFF")

    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Preprocess(content_first(), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message" in caught.value.details()
    err = refusal(server, b"RIFF", chunk_size_bytes=10)
    assert "chunk_size_bytes" in err.details()
    assert server.spool_empty()


# --------------------------------------------------------------------------- limits


def limit_error(err: grpc.RpcError, setting: str) -> str:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_rpc_error(err)
    assert isinstance(typed, LimitExceeded), err.details()
    assert typed.metadata.get("limit") == setting, (typed.metadata, err.details())
    assert setting in err.details()
    return err.details()


def test_upload_and_duration_limits(make_server, corpus):
    small = make_server(max_upload_bytes=100_000, max_audio_seconds=3)
    details = limit_error(
        refusal(small, (corpus / "media/clip.wav").read_bytes()), "max_upload_bytes"
    )
    assert "100000 bytes" in details
    # Declared too large: refused from the config alone (the one byte sent is never needed).
    details = limit_error(refusal(small, b"x", upload_size_bytes=10**9), "max_upload_bytes")
    assert "100000 bytes" in details
    details = limit_error(
        refusal(small, (corpus / "asr/000.flac").read_bytes()), "max_audio_seconds"
    )
    assert "declares 5.35 s" in details and "3.00 s" in details
    assert small.spool_empty() and small.serving()


def test_flac_header_claiming_a_day_is_refused_before_decoding(server, corpus):
    data = bytearray((corpus / "asr/000.flac").read_bytes())
    assert data[:4] == b"fLaC"
    # STREAMINFO total samples: the low 36 bits of bytes 18..26 of the file.
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = ((packed & ~((1 << 36) - 1)) | (16_000 * 86_400)).to_bytes(8, "big")
    start = time.monotonic()
    limit_error(refusal(server, bytes(data), "bomb.flac"), "max_audio_seconds")
    assert time.monotonic() - start < 5


def test_wav_header_claiming_hours_is_refused(server):
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)
    data = (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFF0)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFF00)
        + bytes(32_000)
    )
    details = limit_error(refusal(server, data, "bomb.wav"), "max_audio_seconds")
    assert "WAV header declares 37.3 h" in details


@pytest.fixture(scope="module")
def low_bitrate_files(tmp_path_factory) -> dict[str, Path]:
    """Five minutes of silence as 6 kbit/s Opus and as 8 kbit/s MP3 without a Xing header."""
    out = tmp_path_factory.mktemp("bombs")
    files = {"opus": out / "silence.opus", "mp3": out / "silence.mp3"}
    src = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "300"]
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            *src,
            "-c:a",
            "libopus",
            "-b:a",
            "6k",
            str(files["opus"]),
        ],
        check=True,
        timeout=60,
    )
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            *src,
            "-c:a",
            "libmp3lame",
            "-b:a",
            "8k",
            "-write_xing",
            "0",
            str(files["mp3"]),
        ],
        check=True,
        timeout=60,
    )
    return files


def test_low_bitrate_opus_of_minutes_is_refused_from_its_declared_length(
    make_server, low_bitrate_files
):
    srv = make_server(max_audio_seconds=60)
    data = low_bitrate_files["opus"].read_bytes()
    assert len(data) < 300_000
    start = time.monotonic()
    details = limit_error(refusal(srv, data, "x.opus"), "max_audio_seconds")
    assert "declares 5.0 min" in details and time.monotonic() - start < 5


def test_running_decode_is_killed_once_it_passes_the_pcm_limit(make_server, low_bitrate_files):
    # Without a Xing header ffprobe only estimates the MP3's length, so the pre-check cannot
    # refuse it: the running decode must.
    srv = make_server(max_decoded_bytes=512 * 1024)
    call = srv.stub.Preprocess(requests(low_bitrate_files["mp3"].read_bytes(), "x.mp3"), timeout=60)
    received = 0
    with pytest.raises(grpc.RpcError) as caught:
        for response in call:
            received += len(response.audio.pcm)
    limit_error(caught.value, "max_decoded_bytes")
    assert received <= 512 * 1024
    assert srv.spool_empty(wait=2)


def test_a_hanging_decoder_is_killed_and_the_server_keeps_serving(make_server, tmp_path, corpus):
    hang = tmp_path / "ffmpeg-hang"
    hang.write_text("#!/bin/sh\nexec /bin/sleep 60\n")
    hang.chmod(0o755)
    srv = make_server(ffmpeg_path=str(hang), max_decode_seconds=1)
    start = time.monotonic()
    details = limit_error(
        refusal(srv, (corpus / "media/clip.ogg").read_bytes()), "max_decode_seconds"
    )
    assert "longer than the limit of 1 s" in details and time.monotonic() - start < 5
    assert srv.spool_empty() and srv.serving()
    assert ffmpeg_children() == []


def test_a_crashing_decoder_is_reported_and_the_server_keeps_serving(make_server, tmp_path, corpus):
    crash = tmp_path / "ffmpeg-crash"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    srv = make_server(ffmpeg_path=str(crash))
    err = refusal(srv, (corpus / "media/clip.ogg").read_bytes())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "crashed" in err.details()
    assert srv.spool_empty() and srv.serving()


def test_jobs_over_the_concurrency_limit_wait_and_a_full_queue_is_told_to_retry(
    make_server, corpus
):
    srv = make_server(max_concurrent_jobs=1, max_queued=1)
    release = threading.Event()

    def stalled():
        yield pb.PreprocessRequest(config=pb.PreprocessConfig())
        yield pb.PreprocessRequest(content=b"RIFF")
        release.wait(10)

    first = srv.stub.Preprocess(stalled(), timeout=30)
    deadline = time.monotonic() + 5
    while not any(srv.spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    clip = (corpus / "media/clip.ogg").read_bytes()
    waiting = srv.stub.Preprocess(
        iter(
            [pb.PreprocessRequest(config=pb.PreprocessConfig()), pb.PreprocessRequest(content=clip)]
        ),
        timeout=60,
    )
    deadline = time.monotonic() + 5
    while srv.preprocessor._queue.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.preprocessor._queue.waiting == 1  # queued behind the stalled one, not refused
    err = refusal(srv, clip)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in err.details()
    assert any(
        d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in rpc_status.from_call(err).details
    )
    first.cancel()  # its slot frees: the queued request runs now
    responses = list(waiting)
    assert responses[-1].WhichOneof("payload") == "summary"
    release.set()
    assert srv.spool_empty(wait=5)
