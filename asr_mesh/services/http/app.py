"""The HTTP front door: OpenAI-compatible REST, jobs over REST, WebSocket live captions, a page.

A thin adapter over the gateway's public gRPC API (the SDK, asr_mesh.client.sdk in clients/):
nothing here transcribes. Uploads are parsed as they stream in and refused with 413 once the body
passes `max_upload_bytes`, so an oversized upload never reaches the gateway. Every failure is
answered in OpenAI's error shape; the gateway's typed errors are mapped by the one table in
`openai_format.STATUS_TABLE`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import grpc
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from asr.gateway.v1 import jobs_pb2 as jobs_pb
from asr_mesh.client.sdk import GatewayClient, StreamOptions, TranscribeOptions
from asr_mesh.services.common.errors import MeshError, Overloaded, status_code
from asr_mesh.services.common.metrics import REGISTRY
from asr_mesh.services.common.options import DEFAULT_LANGUAGE
from asr_mesh.services.common.security import client_channel
from asr_mesh.services.http import openai_format as oa
from asr_mesh.services.http.audio import CONTAINERS, PcmChunker, StreamDecoder
from asr_mesh.services.http.settings import HttpSettings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("asr.http")
STATIC_DIR = Path(__file__).parent / "static"
JOB_FORMATS = ("json", "srt", "vtt", "txt")
"""A job renders every document at once, so any result format can be fetched later."""
RESULT_FORMATS = {
    "json": "json",
    "srt": "srt",
    "vtt": "vtt",
    "txt": "txt",
    "text": "txt",
    "verbose_json": "json",
}
MEDIA_TYPES = {
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
}
JOB_STATES = {
    name.removeprefix("JOB_STATE_").lower(): value
    for name, value in jobs_pb.JobState.items()
    if value
}

HTTP_REQUESTS = Counter(
    "asr_http_requests",
    "HTTP requests handled, by route and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "asr_http_request_duration_seconds",
    "Wall time of HTTP requests.",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
WS_ACTIVE = Gauge(
    "asr_http_stream_sessions_active", "WebSocket streaming sessions open now.", registry=REGISTRY
)
WS_EVENTS = Counter(
    "asr_http_stream_events",
    "Streaming events sent to WebSocket clients, by type.",
    ["type"],
    registry=REGISTRY,
)


def mesh_http_error(error: MeshError) -> oa.HttpError:
    """The HTTP answer for a typed gateway error (asr_mesh.services.common.errors)."""
    retry = error.retry_after_s if isinstance(error, Overloaded) else None
    return oa.http_error_for(
        status_code(error).name, error.reason, error.message, retry, getattr(error, "field", "")
    )


def error_response(error: oa.HttpError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class TelemetryMiddleware:
    """One server span per HTTP request or WebSocket session (continuing a caller's traceparent),
    request counts and latency; the span is current while the endpoint runs, so the SDK's traced
    channel carries it into the gateway's metadata: one trace from HTTP to the last service."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "WS")
        started = time.perf_counter()
        status = {"code": 101 if scope["type"] == "websocket" else 500}
        with _tracer.start_as_current_span(
            f"{method} {scope['path']}",
            context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER,
        ) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")

            async def send_wrapper(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], (b"x-trace-id", trace_id.encode())]
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                span.update_name(f"{method} {route}")
                span.set_attributes(
                    {
                        "http.request.method": method,
                        "http.route": route,
                        "http.response.status_code": status["code"],
                    }
                )
                if status["code"] >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
                if route not in ("/metrics", "/healthz", "/readyz"):
                    HTTP_REQUESTS.labels(method, route, str(status["code"])).inc()
                    HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)


class _BodyTooLarge(Exception):
    pass


async def read_upload(request: Request, limit: int) -> tuple[dict[str, list[str]], Any]:
    """Parse a multipart upload, refusing it (413) as soon as the body passes `limit` bytes.

    Returns the text fields (name → values) and the `file` part (a Starlette UploadFile).
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise oa.HttpError(
            415,
            f"send the audio as multipart/form-data with a 'file' part, not "
            f"{kind or 'no content type'}",
            code="unsupported_media_type",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    seen = 0
    receive = request.receive

    async def limited_receive():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge()
        return message

    limited = Request(request.scope, limited_receive)
    try:
        form = await limited.form(max_files=1, max_fields=64)
    except _BodyTooLarge:
        raise too_large(limit) from None
    except (MultiPartException, StarletteHTTPException) as exc:
        raise oa.HttpError(
            400,
            f"the multipart body could not be read: {getattr(exc, 'detail', exc)}",
            code="invalid_multipart",
        ) from None
    fields: dict[str, list[str]] = {}
    upload = None
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(name, []).append(value)
        elif name == "file":
            upload = value
    if upload is None:
        raise oa.HttpError(
            400, "the form has no 'file' part with the audio", param="file", code="missing_file"
        )
    oa.check_file_media_type(upload.content_type or "", upload.filename or "")
    return fields, upload


def too_large(limit: int) -> oa.HttpError:
    return oa.HttpError(
        413,
        f"the upload is larger than this server accepts ({limit} bytes)",
        param="file",
        code="upload_too_large",
    )


def sdk_options(req: oa.TranscriptionRequest, formats: tuple[str, ...]) -> TranscribeOptions:
    return TranscribeOptions(
        language_code=req.language,
        diarize=req.diarize,
        num_speakers=req.num_speakers,
        min_speakers=req.min_speakers,
        max_speakers=req.max_speakers,
        model=req.model,
        formats=formats,
        initial_prompt=req.prompt,
        temperatures=(req.temperature,) if req.temperature is not None else (),
        no_cache=req.no_cache,
    )


def job_dict(job: jobs_pb.Job) -> dict:
    """A job as REST returns it (state names in lower case, times in RFC 3339)."""
    state = jobs_pb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    body = {
        "id": job.job_id,
        "object": "transcription.job",
        "state": state,
        "filename": job.filename,
        "trace_id": job.trace_id,
        "progress": round(job.fraction, 4),
        "attempts": job.attempts,
        "created_at": job.create_time.ToJsonString() if job.HasField("create_time") else None,
        "updated_at": job.update_time.ToJsonString() if job.HasField("update_time") else None,
        "expires_at": job.expire_time.ToJsonString() if job.HasField("expire_time") else None,
        "error": (
            {"code": job.error.code, "message": job.error.message, "reason": job.error.reason}
            if job.HasField("error") and job.error.message
            else None
        ),
        "result": (
            MessageToDict(job.result, preserving_proto_field_name=True)
            if job.HasField("result")
            else None
        ),
    }
    if state == "succeeded":
        body["links"] = {
            fmt: f"/v1/jobs/{job.job_id}/result?format={fmt}"
            for fmt in ("json", "verbose_json", "srt", "vtt", "text")
        }
    return body


def render(req: oa.TranscriptionRequest, documents: dict[str, str]) -> Response:
    """The response for `req.response_format` from the mesh's documents (extension → content)."""
    fmt = req.response_format
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(documents[fmt], media_type=MEDIA_TYPES[fmt])
    if fmt == "txt":
        return PlainTextResponse(documents["txt"], media_type=MEDIA_TYPES["txt"])
    mesh_json = json.loads(documents["json"])
    if fmt == "text":
        return PlainTextResponse(oa.transcript_text(mesh_json) + "\n")
    if fmt == "verbose_json":
        return JSONResponse(oa.to_verbose_json(mesh_json, req))
    return JSONResponse(oa.to_openai_json(mesh_json))


def create_app(settings: HttpSettings) -> FastAPI:
    """The ASGI app; `asr_mesh.services.http.server.create_server` runs it on uvicorn."""
    app = FastAPI(
        title="asr-mesh HTTP API",
        version="1",
        description="OpenAI-compatible transcription, jobs and live captions over the asr-mesh "
        "gateway.",
    )
    client = GatewayClient(
        settings.gateway_address,
        settings.max_message_bytes,
        connect_timeout_s=settings.gateway_connect_timeout_s,
        ca_cert=settings.gateway_ca_file or None,
        token=settings.gateway_token or None,
    )
    health_channel = client_channel(
        settings.gateway_address, ca_cert=settings.gateway_ca_file or None
    )
    health_stub = health_pb2_grpc.HealthStub(health_channel)
    app.state.settings = settings
    app.state.gateway = client

    def close() -> None:
        client.close()
        health_channel.close()

    app.state.close = close
    tokens = [t.encode() for t in settings.api_tokens]

    def authorized(presented: str) -> bool:
        return not tokens or any(hmac.compare_digest(presented.encode(), t) for t in tokens)

    @app.middleware("http")
    async def auth_and_errors(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1/") and tokens:
            header = request.headers.get("authorization", "")
            presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not authorized(presented):
                return error_response(
                    oa.HttpError(
                        401,
                        "missing or wrong API token; send 'Authorization: Bearer <token>'",
                        type="authentication_error",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                )
        try:
            return await call_next(request)
        except oa.HttpError as exc:
            return error_response(exc)
        except MeshError as exc:
            return error_response(mesh_http_error(exc))

    @app.exception_handler(oa.HttpError)
    async def on_http_error(_request: Request, exc: oa.HttpError):
        return error_response(exc)

    @app.exception_handler(MeshError)
    async def on_mesh_error(_request: Request, exc: MeshError):
        return error_response(mesh_http_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_starlette_error(_request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(
            oa.HttpError(
                exc.status_code,
                str(exc.detail),
                type=kind,
                code="not_found" if exc.status_code == 404 else None,
            )
        )

    @app.exception_handler(Exception)
    async def on_unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error in the HTTP service")
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
        return error_response(
            oa.HttpError(500, f"internal error (trace id {trace_id})", type="server_error")
        )

    upload_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "model": {
                                "type": "string",
                                "default": "whisper-1",
                                "description": "whisper-1 = the mesh's default model; "
                                "any registry name",
                            },
                            "language": {
                                "type": "string",
                                "description": "ISO-639-1 ('pt') or BCP-47 ('pt-BR')",
                            },
                            "prompt": {"type": "string"},
                            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                            "response_format": {
                                "type": "string",
                                "enum": list(oa.RESPONSE_FORMATS),
                            },
                            "timestamp_granularities[]": {
                                "type": "array",
                                "items": {"type": "string", "enum": list(oa.GRANULARITIES)},
                            },
                            "diarize": {"type": "boolean"},
                            "num_speakers": {"type": "integer"},
                            "min_speakers": {"type": "integer"},
                            "max_speakers": {"type": "integer"},
                            "no_cache": {
                                "type": "boolean",
                                "description": "bypass the gateway's result cache",
                            },
                        },
                    }
                }
            },
        }
    }

    async def transcribe_upload(request: Request) -> tuple[oa.TranscriptionRequest, Any]:
        fields, upload = await read_upload(request, settings.max_upload_bytes)
        req = oa.parse_transcription_form(fields)
        return req, upload

    @app.post(
        "/v1/audio/transcriptions",
        openapi_extra=upload_doc,
        tags=["openai"],
        summary="Transcribe an audio file (OpenAI-compatible)",
    )
    async def transcriptions(request: Request) -> Response:
        req, upload = await transcribe_upload(request)
        options = sdk_options(req, req.mesh_formats())
        try:
            result = await anyio.to_thread.run_sync(
                lambda: client.transcribe_file(
                    upload.file,
                    upload.filename or "audio",
                    options,
                    size=upload.size or 0,
                    timeout_s=settings.request_timeout_s,
                )
            )
        finally:
            await upload.close()
        documents = {doc.file_extension: doc.content for doc in result.documents}
        return render(req, documents)

    @app.post(
        "/v1/jobs",
        openapi_extra=upload_doc,
        tags=["jobs"],
        status_code=202,
        summary="Submit a transcription job (every format rendered)",
    )
    async def submit_job(request: Request) -> Response:
        req, upload = await transcribe_upload(request)
        options = sdk_options(req, JOB_FORMATS)
        try:
            job = await anyio.to_thread.run_sync(
                lambda: client.submit_job_file(
                    upload.file,
                    upload.filename or "audio",
                    options,
                    size=upload.size or 0,
                    timeout_s=settings.request_timeout_s,
                )
            )
        finally:
            await upload.close()
        return JSONResponse(
            job_dict(job), status_code=202, headers={"Location": f"/v1/jobs/{job.job_id}"}
        )

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="A job's state and progress")
    async def get_job(job_id: str) -> Response:
        return JSONResponse(job_dict(await anyio.to_thread.run_sync(client.get_job, job_id)))

    @app.get("/v1/jobs", tags=["jobs"], summary="Jobs, newest first (paged)")
    async def list_jobs(state: str = "", page_size: int = 20, page_token: str = "") -> Response:
        if state and state not in JOB_STATES:
            raise oa.HttpError(
                400,
                f"unknown state {state!r}; choose from {', '.join(JOB_STATES)}",
                param="state",
                code="invalid_value",
            )
        jobs, token = await anyio.to_thread.run_sync(
            lambda: client.list_jobs(JOB_STATES.get(state, 0), page_size, page_token)
        )
        return JSONResponse(
            {
                "object": "list",
                "data": [job_dict(j) for j in jobs],
                "next_page_token": token or None,
            }
        )

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel a job")
    async def cancel_job(job_id: str) -> Response:
        return JSONResponse(job_dict(await anyio.to_thread.run_sync(client.cancel_job, job_id)))

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="Delete a job and its results")
    async def delete_job(job_id: str) -> Response:
        await anyio.to_thread.run_sync(client.delete_job, job_id)
        return JSONResponse({"id": job_id, "object": "transcription.job", "deleted": True})

    @app.get(
        "/v1/jobs/{job_id}/result",
        tags=["jobs"],
        summary="A finished job's transcript: json, verbose_json, text, srt, vtt or txt",
    )
    async def job_result(job_id: str, format: str = "json", download: bool = False) -> Response:
        if format not in RESULT_FORMATS:
            raise oa.HttpError(
                400,
                f"unknown format {format!r}; choose from {', '.join(RESULT_FORMATS)}",
                param="format",
                code="invalid_value",
            )
        result = await anyio.to_thread.run_sync(
            lambda: client.job_results(job_id, timeout_s=settings.request_timeout_s)
        )
        documents = {doc.file_extension: doc.content for doc in result.documents}
        if RESULT_FORMATS[format] not in documents:
            raise oa.HttpError(
                404, f"job {job_id} has no {format} document", param="format", code="not_found"
            )
        response = render(
            oa.TranscriptionRequest(response_format=format, granularities=("segment", "word")),
            documents,
        )
        if download:
            job = await anyio.to_thread.run_sync(client.get_job, job_id)
            stem = Path(job.filename).stem or job_id
            stem = "".join(
                c if c.isalnum() or c in "-_." else "_" for c in stem
            )  # safe in a header
            ext = {"verbose_json": "json", "text": "txt"}.get(format, format)
            response.headers["Content-Disposition"] = f'attachment; filename="{stem}.{ext}"'
        return response

    @app.get("/healthz", tags=["health"], summary="The HTTP service is alive")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["health"], summary="The gateway is reachable and serving")
    async def readyz() -> Response:
        def check() -> str:
            try:
                reply = health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
            except grpc.RpcError as err:
                return f"gateway {settings.gateway_address} unreachable: {err.code().name}"
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return f"gateway {settings.gateway_address} is not serving"
            return ""

        problem = await anyio.to_thread.run_sync(check)
        if problem:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok", "gateway": settings.gateway_address})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await StreamSession(ws, client, settings, authorized).run()

    if settings.page_enabled:
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")
    app.add_middleware(
        TelemetryMiddleware
    )  # added last = outermost: refusals are traced and counted too
    return app


class StreamSession:
    """One WebSocket live-captions session bridged to the gateway's StreamingTranscribe.

    Protocol: the client sends one JSON text message first,
    `{"encoding": "pcm_s16le" | "webm" | "ogg", "sample_rate": 16000, "language": "pt-BR",
    "profile": "low_latency" | "balanced" | "accurate", "interim_results": true}`, then binary
    messages of audio (raw 16 kHz mono s16le, or the MediaRecorder stream), then `{"type": "stop"}`
    (or just closes). The server sends JSON: `{"type": "ready"}`, then `interim`, `final`,
    `speech` events, a `summary`, or one `error` `{"type": "error", "status", "code", "message"}`,
    and closes. Every event carries `received_s`: seconds since the first audio arrived.
    """

    def __init__(self, ws: WebSocket, client: GatewayClient, settings: HttpSettings, authorized):
        self.ws, self.client, self.settings, self.authorized = ws, client, settings, authorized
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.pcm: queue.Queue = queue.Queue()
        self.chunker = PcmChunker()
        self.decoder: StreamDecoder | None = None
        self.first_audio: float | None = None
        self.ended = False

    async def fail(self, status: int, code: str, message: str, close_code: int = 1008) -> None:
        await self.ws.send_json(
            {"type": "error", "status": status, "code": code, "message": message}
        )
        await self.ws.close(close_code)

    async def run(self) -> None:
        ws = self.ws
        await ws.accept()
        if not self.authorized(ws.query_params.get("token", "")):
            return await self.fail(
                401, "invalid_api_key", "missing or wrong API token; add ?token=<token>"
            )
        try:
            with anyio.fail_after(self.settings.stream_config_timeout_s):
                first = await ws.receive_text()
            config = json.loads(first)
            if not isinstance(config, dict):
                raise ValueError("not an object")
        except TimeoutError:
            return await self.fail(408, "config_timeout", "send the JSON config message first")
        except (ValueError, KeyError, WebSocketDisconnect) as exc:
            if isinstance(exc, WebSocketDisconnect):
                return
            return await self.fail(
                400, "invalid_config", "the first message must be a JSON config object"
            )
        encoding = str(config.get("encoding", "pcm_s16le")).lower()
        if encoding not in ("pcm_s16le", *CONTAINERS):
            return await self.fail(
                400,
                "invalid_config",
                f"encoding {encoding!r} is not supported; "
                f"choose from pcm_s16le, {', '.join(CONTAINERS)}",
            )
        if encoding == "pcm_s16le" and int(config.get("sample_rate", 16000)) != 16000:
            return await self.fail(
                400,
                "invalid_config",
                "raw PCM must be 16 kHz mono s16le (resample in the browser, or send webm)",
            )
        try:
            options = StreamOptions(
                language_code=str(config.get("language") or DEFAULT_LANGUAGE),
                model=str(config.get("model") or ""),
                profile=str(config.get("profile") or ""),
                interim_results=bool(config.get("interim_results", True)),
            )
            options.to_proto()
        except MeshError as exc:
            return await self.fail(400, "invalid_config", exc.message)
        if encoding in CONTAINERS:
            try:
                self.decoder = StreamDecoder(
                    encoding, self._on_decoded, self._on_decoder_end, self.settings.ffmpeg
                )
            except OSError as exc:
                return await self.fail(
                    500, "decoder_unavailable", f"cannot start ffmpeg: {exc}", 1011
                )
        WS_ACTIVE.inc()
        worker = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._bridge, options),
            daemon=True,
            name="ws-stream",
        )
        worker.start()
        await ws.send_json({"type": "ready", "encoding": encoding})
        receiver = asyncio.create_task(self._receive())
        try:
            await self._send()
        finally:
            receiver.cancel()
            self._end_audio()
            if self.decoder:
                self.decoder.kill()
            WS_ACTIVE.dec()
            await anyio.to_thread.run_sync(worker.join, 30)

    # -- audio in ------------------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            while not self.ended:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    self._audio(message["bytes"])
                elif message.get("text") is not None:
                    try:
                        kind = json.loads(message["text"]).get("type")
                    except (ValueError, AttributeError):
                        kind = None
                    if kind == "stop":
                        break
        finally:
            self._finish_input()

    def _audio(self, data: bytes) -> None:
        if self.first_audio is None:
            self.first_audio = time.monotonic()
        if self.decoder is not None:
            self.decoder.feed(data)
        else:
            self._on_decoded(data)

    def _on_decoded(self, pcm: bytes) -> None:  # event loop (raw PCM) or the ffmpeg reader thread
        for piece in self.chunker.push(pcm):
            self.pcm.put(piece)

    def _on_decoder_end(self, error: str) -> None:
        if error:
            self.loop.call_soon_threadsafe(self.events.put_nowait, ("decode_error", error))
        self._end_audio()

    def _finish_input(self) -> None:
        if self.decoder is not None:
            self.decoder.close()  # ffmpeg flushes, then _on_decoder_end ends the audio
        else:
            self._end_audio()

    def _end_audio(self) -> None:
        if not self.ended:
            self.ended = True
            for piece in self.chunker.flush():
                self.pcm.put(piece)
            self.pcm.put(None)

    # -- the gateway call (a thread: the SDK is synchronous) ------------------------------------

    def _bridge(self, options: StreamOptions) -> None:
        put = self.events.put_nowait
        try:
            for event in self.client.stream(iter(self.pcm.get, None), options):
                self.loop.call_soon_threadsafe(put, ("event", event))
        except MeshError as exc:
            self.loop.call_soon_threadsafe(put, ("error", exc))
        except Exception as exc:  # a bug: still tell the browser, never hang it
            log.exception("streaming bridge failed")
            self.loop.call_soon_threadsafe(put, ("error", exc))
        finally:
            self.loop.call_soon_threadsafe(put, ("done", None))

    # -- events out ----------------------------------------------------------------------------

    async def _send(self) -> None:
        while True:
            kind, item = await self.events.get()
            if kind == "done":
                await self._close(1000)
                return
            if kind == "decode_error":
                await self._safe_send(
                    {
                        "type": "error",
                        "status": 400,
                        "code": "invalid_audio",
                        "message": f"the audio stream could not be decoded: {item}",
                    }
                )
                continue
            if kind == "error":
                if isinstance(item, MeshError):
                    err = mesh_http_error(item)
                    body = {
                        "type": "error",
                        "status": err.status,
                        "code": err.code,
                        "message": err.message,
                    }
                else:
                    body = {
                        "type": "error",
                        "status": 500,
                        "code": "internal",
                        "message": "internal error",
                    }
                await self._safe_send(body)
                continue
            message = stream_event_dict(item)
            if message is None:
                continue
            message["received_s"] = round(
                time.monotonic() - (self.first_audio or time.monotonic()), 3
            )
            message["sent_audio_s"] = round(self.chunker.seconds, 3)
            WS_EVENTS.labels(message["type"]).inc()
            await self._safe_send(message)

    async def _safe_send(self, body: dict) -> None:
        try:
            await self.ws.send_json(body)
        except Exception:  # the browser left (the server's exception type varies): end the session
            self._end_audio()

    async def _close(self, code: int) -> None:
        try:
            await self.ws.close(code)
        except Exception:  # already closed by the browser
            pass


def _seconds(duration) -> float:
    return round(duration.seconds + duration.nanos / 1e9, 3)


def stream_event_dict(event) -> dict | None:
    """An asr.common.v1.StreamingEvent as the WebSocket's JSON message."""
    kind = event.WhichOneof("event")
    if kind == "interim":
        r = event.interim
        return {
            "type": "interim",
            "text": r.text.strip(),
            "stability": round(r.stability, 3),
            "start": _seconds(r.start_offset),
            "end": _seconds(r.end_offset),
        }
    if kind == "final":
        seg = event.final.segment
        return {
            "type": "final",
            "text": seg.text.strip(),
            "start": _seconds(seg.start_offset),
            "end": _seconds(seg.end_offset),
            "speaker": seg.speaker or None,
            "end_of_utterance": event.final.end_of_utterance,
            "words": [
                {
                    "word": w.word,
                    "start": _seconds(w.start_offset),
                    "end": _seconds(w.end_offset),
                    "probability": round(w.probability, 3),
                }
                for w in seg.words
            ],
        }
    if kind == "speech":
        name = "begin" if event.speech.kind == event.speech.KIND_SPEECH_BEGIN else "end"
        return {"type": "speech", "event": name, "offset": _seconds(event.speech.offset)}
    if kind == "summary":
        s = event.summary
        return {
            "type": "summary",
            "audio_duration": _seconds(s.audio_duration),
            "final_count": s.final_count,
            "interim_count": s.interim_count,
            "model": s.model,
            "latency_profile": s.latency_profile,
        }
    return None
