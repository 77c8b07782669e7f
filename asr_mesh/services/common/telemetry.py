"""One OpenTelemetry setup for every process of the mesh.

The exporter is chosen by the standard variables: `OTEL_TRACES_EXPORTER` (`otlp`, `console`,
`none`, or this project's `file`, the default), `OTEL_EXPORTER_OTLP_*` for the collector, and
`OTEL_SDK_DISABLED`. The `file` exporter appends one JSON object per finished span to
`<state dir>/traces/<service>-<pid>.jsonl`, so a single machine needs no collector and tools and
tests can read traces back (`asr trace`, see `asr_mesh.client.traces`). Each file is rotated once it
passes `ASR_TRACE_FILE_MAX_BYTES` (64 MiB; one older generation `*.jsonl.1` is kept).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    server_interceptor,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from asr_mesh.client.tracing import traced_channel  # noqa: F401  # re-exported for the server

log = logging.getLogger(__name__)

_provider: TracerProvider | None = None
_lock = threading.Lock()


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as JSON lines to one file per process."""

    def __init__(self, path: Path, max_bytes: int = 64 << 20):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_to_dict(span), ensure_ascii=False) + "\n" for span in spans]
        with self._lock:
            try:
                if self._path.stat().st_size > self._max_bytes:  # bounded disk use on long runs
                    self._path.replace(self._path.with_name(self._path.name + ".1"))
            except FileNotFoundError:
                pass
            with open(self._path, "a", encoding="utf-8") as out:
                out.writelines(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:  # nothing buffered
        pass


def span_to_dict(span: ReadableSpan) -> dict:
    """The flat span record used by the file exporter and `asr trace`."""
    ctx = span.get_span_context()
    assert ctx is not None, "a span the SDK has ended always carries its context"
    parent = span.parent
    return {
        "service": span.resource.attributes.get(SERVICE_NAME, ""),
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent else "",
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_description": span.status.description or "",
        "attributes": {k: _jsonable(v) for k, v in (span.attributes or {}).items()},
        "events": [
            {
                "name": ev.name,
                "time_ns": ev.timestamp,
                "attributes": {k: _jsonable(v) for k, v in (ev.attributes or {}).items()},
            }
            for ev in span.events
        ],
    }


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def setup_telemetry(service_name: str, state_dir: Path) -> TracerProvider:
    """Configure tracing once for this process; later calls return the same provider."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        resource = Resource.create({SERVICE_NAME: service_name})
        provider = TracerProvider(resource=resource)
        disabled = os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
        exporters = [] if disabled else _exporter_names()
        for name in exporters:
            if name == "file":
                path = trace_dir(state_dir) / f"{service_name}-{os.getpid()}.jsonl"
                # Synchronous so a trace is complete on disk when the response reaches the caller.
                max_bytes = _positive_int(os.environ.get("ASR_TRACE_FILE_MAX_BYTES"), 64 << 20)
                provider.add_span_processor(
                    SimpleSpanProcessor(JsonLinesSpanExporter(path, max_bytes))
                )
            elif name == "otlp":
                provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
            elif name == "console":
                provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
            elif name != "none":
                log.warning("unknown OTEL_TRACES_EXPORTER entry %r ignored", name)
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


def _positive_int(raw: str | None, default: int) -> int:
    try:
        value = int(raw) if raw else default
    except ValueError:
        log.warning("ASR_TRACE_FILE_MAX_BYTES=%r is not a number; using %d", raw, default)
        return default
    return value if value > 0 else default


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "file")
    return [part.strip().lower() for part in raw.split(",") if part.strip()]


def _otlp_exporter() -> SpanExporter:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    return GrpcSpanExporter()


def shutdown_telemetry() -> None:
    """Flush and close exporters (called on graceful shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def trace_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "traces"


def current_trace_id() -> str:
    """Hex trace id of the active span, or "" when there is none."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """Interceptors that continue the caller's trace in a server (outermost first)."""
    return [server_interceptor(tracer_provider=trace.get_tracer_provider())]


_UNTRACED = ("/grpc.health.v1.", "/grpc.reflection.")


def aio_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The grpc.aio counterpart of `server_interceptors`. Health and reflection are not traced:
    their async servicers write with `context.write`, which the tracing wrapper cannot carry,
    and probes would drown the traces anyway."""
    return [
        aio_server_interceptor(
            tracer_provider=trace.get_tracer_provider(),
            filter_=lambda details: not details.method.startswith(_UNTRACED),
        )
    ]


def aio_traced_channel_interceptors() -> list:
    """Client interceptors for a grpc.aio channel: every call carries the current trace context."""
    return aio_client_interceptors(tracer_provider=trace.get_tracer_provider())


# `traced_channel` (wrap a channel so every call carries the current trace context, with a CLIENT
# span per call) is the client distribution's, imported above: the SDK and the gateway's channels
# to the services use the one implementation.
