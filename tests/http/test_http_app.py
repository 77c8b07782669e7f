"""The HTTP service in process against a real in-process gateway (real preprocess and merge;
only the model is replaced, see http_helpers)."""
# ruff: noqa: F811  (pytest fixtures imported from http_helpers are redefined as arguments)

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from http_helpers import WORDS, backends, behaviour, gateway, http, start_http, wav_bytes  # noqa: F401  (fixtures)

from asr_mesh.services.common.errors import InvalidInput, Overloaded

pytestmark = pytest.mark.grpc


def post(http, data=None, files=None, **kw):
    files = files if files is not None else {"file": ("clip.wav", wav_bytes(), "audio/wav")}
    return httpx.post(
        f"{http.url}/v1/audio/transcriptions", data=data or {}, files=files, timeout=60, **kw
    )


def assert_openai_error(response, status, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_json_text_srt_vtt(http):
    assert post(http, {"model": "whisper-1"}).json() == {"text": " ".join(WORDS)}
    text = post(http, {"response_format": "text"})
    assert text.text == " ".join(WORDS) + "\n" and text.headers["content-type"].startswith(
        "text/plain"
    )
    srt = post(http, {"response_format": "srt"})
    assert srt.text.startswith("1\n00:00:00,000 --> ") and "Vamos começar" in srt.text
    vtt = post(http, {"response_format": "vtt"})
    assert vtt.text.startswith("WEBVTT") and vtt.headers["content-type"].startswith("text/vtt")


def test_verbose_json_from_the_mesh_json(http, behaviour):
    r = post(
        http,
        {
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
            "language": "pt",
            "prompt": "reunião",
            "temperature": "0.2",
        },
    )
    body = r.json()
    assert body["task"] == "transcribe" and body["language"] == "portuguese"
    assert body["duration"] == pytest.approx(2.0, abs=0.05)
    assert [w["word"] for w in body["words"]] == list(WORDS)
    assert len(body["segments"]) == 2 and body["segments"][1]["avg_logprob"] == pytest.approx(-0.3)
    options = behaviour.calls[-1].recognition.transcription  # what reached the chain
    assert options.language_code == "pt" and options.initial_prompt == "reunião"
    assert options.temperatures == pytest.approx((0.2,))


def test_diarize_extra_fields_reach_the_chain_and_label_segments(http, behaviour):
    body = post(http, {"response_format": "verbose_json", "num_speakers": "2"}).json()
    speakers = behaviour.calls[-1].recognition.diarization
    assert speakers.enabled and speakers.num_speakers == 2
    assert {s.get("speaker") for s in body["segments"]} == {"SPEAKER_00", "SPEAKER_01"}


def test_undecodable_audio_is_400_from_preprocess(http, behaviour):
    err = assert_openai_error(
        post(http, files={"file": ("bad.wav", b"not audio at all" * 64, "audio/wav")}),
        400,
        "invalid_audio",
    )
    assert err["type"] == "invalid_request_error"
    assert behaviour.calls == []  # refused before the model stage


def test_upload_limit_413_before_the_gateway(gateway, behaviour):
    small = start_http(gateway.address, max_upload_bytes=20_000)
    try:
        # Declared too large: refused from the Content-Length alone.
        assert_openai_error(
            post(small, files={"file": ("big.wav", wav_bytes(3.0), "audio/wav")}),
            413,
            "upload_too_large",
        )

        # Streamed without a length (chunked): refused once the count passes the limit.
        def body():
            head = (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\n"
            )
            yield head
            for _ in range(100):
                yield b"\0" * 4096
            yield b"\r\n--b--\r\n"

        r = httpx.post(
            f"{small.url}/v1/audio/transcriptions",
            content=body(),
            timeout=30,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert_openai_error(r, 413, "upload_too_large")
        assert (
            post(small, files={"file": ("ok.wav", wav_bytes(0.5), "audio/wav")}).status_code == 200
        )
    finally:
        small.stop(1)
    assert len(behaviour.calls) == 1  # only the small upload reached the chain


def test_wrong_content_types(http, behaviour):
    r = httpx.post(f"{http.url}/v1/audio/transcriptions", json={"file": "x"}, timeout=10)
    assert_openai_error(r, 415, "unsupported_media_type")
    r = post(http, files={"file": ("notes.txt", b"hello", "text/plain")})
    assert assert_openai_error(r, 400, "invalid_file_format")["param"] == "file"
    r = httpx.post(
        f"{http.url}/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"other": ("a.wav", b"x", "audio/wav")},
        timeout=10,
    )
    assert_openai_error(r, 400, "missing_file")
    assert_openai_error(post(http, {"response_format": "xml"}), 400, "invalid_value")
    assert behaviour.calls == []


def test_overloaded_gateway_is_429_with_retry_after(http, behaviour):
    behaviour.fail = Overloaded("transcription is at capacity", retry_after_s=4)
    r = post(http)
    err = assert_openai_error(r, 429, "overloaded")
    assert r.headers["retry-after"] == "4" and "capacity" in err["message"]
    behaviour.fail = InvalidInput("unknown quality profile")
    assert_openai_error(post(http), 400)


def test_unreachable_gateway_is_503_and_not_ready():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handle = start_http(f"127.0.0.1:{port}", gateway_connect_timeout_s=1)
    try:
        err = assert_openai_error(post(handle), 503, "dependency_unavailable")
        assert f"127.0.0.1:{port}" in err["message"]
        assert httpx.get(f"{handle.url}/healthz").status_code == 200
        assert httpx.get(f"{handle.url}/readyz").status_code == 503
    finally:
        handle.stop(1)


def test_tokens(gateway):
    handle = start_http(gateway.address, api_tokens="s3cret,other")
    try:
        err = assert_openai_error(post(handle), 401, "invalid_api_key")
        assert err["type"] == "authentication_error"
        assert_openai_error(post(handle, headers={"Authorization": "Bearer nope"}), 401)
        assert post(handle, headers={"Authorization": "Bearer other"}).status_code == 200
        assert httpx.get(f"{handle.url}/healthz").status_code == 200  # probes need no token
    finally:
        handle.stop(1)


def test_health_openapi_metrics_page(http):
    assert httpx.get(f"{http.url}/readyz").json()["status"] == "ok"
    schema = httpx.get(f"{http.url}/openapi.json").json()
    assert {"/v1/audio/transcriptions", "/v1/jobs", "/v1/jobs/{job_id}/result"} <= set(
        schema["paths"]
    )
    form = schema["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert "file" in form["multipart/form-data"]["schema"]["properties"]
    post(http)
    metrics = httpx.get(f"{http.url}/metrics").text
    assert (
        'asr_http_requests_total{method="POST",route="/v1/audio/transcriptions",status="200"}'
        in metrics
    )
    page = httpx.get(f"{http.url}/")
    assert page.status_code == 200 and "aria-live" in page.text
    assert_openai_error(httpx.get(f"{http.url}/v1/nothing"), 404)


def test_job_api_over_rest(http):
    r = httpx.post(
        f"{http.url}/v1/jobs",
        files={"file": ("meeting.wav", wav_bytes(), "audio/wav")},
        data={"language": "pt"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and job["state"] in (
        "queued",
        "running",
    )
    deadline = time.monotonic() + 60
    while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = httpx.get(f"{http.url}/v1/jobs/{job['id']}").json()
    assert job["state"] == "succeeded", job
    assert job["filename"] == "meeting.wav" and job["progress"] == 1.0
    listed = httpx.get(f"{http.url}/v1/jobs", params={"state": "succeeded"}).json()
    assert job["id"] in [j["id"] for j in listed["data"]]
    srt = httpx.get(f"{http.url}{job['links']['srt']}&download=true")
    assert srt.status_code == 200 and "Vamos começar" in srt.text
    assert srt.headers["content-disposition"] == 'attachment; filename="meeting.srt"'
    verbose = httpx.get(
        f"{http.url}/v1/jobs/{job['id']}/result", params={"format": "verbose_json"}
    ).json()
    assert [w["word"] for w in verbose["words"]] == list(WORDS)
    assert json.loads(httpx.get(f"{http.url}/v1/jobs/{job['id']}/result").text) == {
        "text": " ".join(WORDS)
    }
    assert_openai_error(
        httpx.get(f"{http.url}/v1/jobs/{job['id']}/result", params={"format": "doc"}), 400
    )
    assert httpx.delete(f"{http.url}/v1/jobs/{job['id']}").json()["deleted"] is True
    assert_openai_error(httpx.get(f"{http.url}/v1/jobs/{job['id']}"), 404)
    assert_openai_error(httpx.get(f"{http.url}/v1/jobs", params={"state": "sleeping"}), 400)


def test_cancel_a_running_job(http, behaviour):
    import threading

    behaviour.block = threading.Event()
    job = httpx.post(
        f"{http.url}/v1/jobs", files={"file": ("a.wav", wav_bytes(), "audio/wav")}, timeout=30
    ).json()
    try:
        cancelled = httpx.post(f"{http.url}/v1/jobs/{job['id']}/cancel", timeout=30).json()
        assert cancelled["state"] == "cancelled"
    finally:
        behaviour.block.set()
    assert_openai_error(httpx.get(f"{http.url}/v1/jobs/{job['id']}/result", timeout=30), 400)
