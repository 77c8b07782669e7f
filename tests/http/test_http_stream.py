"""The WebSocket endpoint in process: what it refuses, how it reports a gateway failure, and the
ffmpeg decoder it uses for MediaRecorder (WebM/Opus) streams. Streaming with the model is in
test_http_mesh.py."""
# ruff: noqa: F811  (pytest fixtures imported from http_helpers are redefined as arguments)

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from http_helpers import backends, behaviour, gateway, http, start_http, wav_bytes  # noqa: F401  (fixtures)
from websockets.sync.client import connect

from asr_mesh.services.http.audio import StreamDecoder

pytestmark = pytest.mark.grpc


def ws_url(handle, query=""):
    return f"ws://{handle.address}/v1/stream{query}"


def messages(ws):
    out = []
    try:
        for raw in ws:
            out.append(json.loads(raw))
    except Exception:  # closed
        pass
    return out


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("not json", "JSON config"),
        (json.dumps({"encoding": "mp3"}), "encoding 'mp3' is not supported"),
        (json.dumps({"encoding": "pcm_s16le", "sample_rate": 44100}), "16 kHz"),
        (json.dumps({"profile": "turbo"}), "unknown latency profile"),
    ],
)
def test_bad_config_is_one_error_message_then_close(http, config, needle):
    with connect(ws_url(http), open_timeout=10) as ws:
        ws.send(config)
        got = messages(ws)
    assert len(got) == 1 and got[0]["type"] == "error" and got[0]["status"] == 400
    assert needle in got[0]["message"]


def test_transcription_down_reaches_the_browser_as_503(http):
    """The test gateway points StreamingTranscribe at a port nobody listens on."""
    with connect(ws_url(http), open_timeout=10) as ws:
        ws.send(json.dumps({"encoding": "pcm_s16le", "sample_rate": 16000}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(b"\0\0" * 1600)
        ws.send(json.dumps({"type": "stop"}))
        got = messages(ws)
    errors = [m for m in got if m["type"] == "error"]
    assert errors and errors[0]["status"] == 503
    assert "transcription service is unavailable" in errors[0]["message"]


def test_token_is_checked_on_the_socket(gateway):
    handle = start_http(gateway.address, api_tokens="abc")
    try:
        with connect(ws_url(handle), open_timeout=10) as ws:
            got = messages(ws)
        assert got[0]["status"] == 401
        with connect(ws_url(handle, "?token=abc"), open_timeout=10) as ws:
            ws.send(json.dumps({"encoding": "mp3"}))
            assert messages(ws)[0]["status"] == 400  # past the token check
    finally:
        handle.stop(1)


def test_caller_trace_is_continued_into_the_gateway(http):
    """A traceparent sent to the HTTP service is the trace the gateway records for the job."""
    import httpx

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = httpx.post(
        f"{http.url}/v1/jobs",
        files={"file": ("a.wav", wav_bytes(), "audio/wav")},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        timeout=30,
    )
    assert r.status_code == 202 and r.headers["x-trace-id"] == trace_id
    assert r.json()["trace_id"] == trace_id


def test_webm_opus_stream_decodes_as_it_arrives(tmp_path):
    source = tmp_path / "tone.wav"
    source.write_bytes(wav_bytes(3.0, rate=48000))
    webm = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            str(source),
            "-c:a",
            "libopus",
            "-f",
            "webm",
            "pipe:1",
        ],
        capture_output=True,
        check=True,
    ).stdout
    pcm, ended = bytearray(), threading.Event()
    errors = []

    def on_end(error):
        errors.append(error)
        ended.set()

    decoder = StreamDecoder("webm", pcm.extend, on_end)
    for offset in range(0, len(webm), 1000):  # MediaRecorder-sized pieces
        assert decoder.feed(webm[offset : offset + 1000])
    decoder.close()
    assert ended.wait(20) and errors == [""]
    assert abs(len(pcm) / 32000 - 3.0) < 0.1  # 16 kHz mono s16le, all of it


def test_garbage_stream_reports_a_decoder_error():
    ended, errors = threading.Event(), []
    decoder = StreamDecoder("webm", lambda _: None, lambda e: (errors.append(e), ended.set()))
    decoder.feed(b"this is not a webm stream" * 100)
    decoder.close()
    assert ended.wait(20) and errors[0]
