"""Prometheus metrics for every service: one registry per process, one HTTP endpoint.

Names follow Prometheus conventions (base units, `_total` counters, `_seconds`). Every service
gets the gRPC request metrics from `MetricsInterceptor`; services record their own domain
figures (real-time factor, queue depth, model loaded, batch size, cache hits) through the
helpers below. The endpoint listens on `ASR_<SERVICE>_METRICS_PORT` (0 = off, the local
default; 9464 in Kubernetes) at `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from asr_mesh.services.common.handlers import rewrapped

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)

REQUESTS = Counter(
    "asr_grpc_server_requests",
    "gRPC requests handled, by method and status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "asr_grpc_server_request_duration_seconds",
    "Wall time of gRPC requests, by method and status.",
    ["service", "method", "code"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "asr_grpc_server_in_flight_requests",
    "gRPC requests being handled now.",
    ["service", "method"],
    registry=REGISTRY,
)
REAL_TIME_FACTOR = Histogram(
    "asr_real_time_factor",
    "Processing seconds per audio second of finished requests.",
    ["service"],
    buckets=_RTF_BUCKETS,
    registry=REGISTRY,
)
AUDIO_SECONDS = Counter(
    "asr_audio_processed_seconds",
    "Seconds of audio processed.",
    ["service"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "asr_queue_depth",
    "Requests waiting for a worker (the autoscaling signal).",
    ["service"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "asr_queue_wait_seconds",
    "Time admitted requests spent waiting in the admission queue.",
    ["service"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
QUEUE_REJECTED = Counter(
    "asr_queue_rejected",
    "Requests refused because the admission queue was full, or handed back on drain.",
    ["service", "reason"],
    registry=REGISTRY,
)
BUSY_WORKERS = Gauge(
    "asr_busy_workers",
    "Requests being processed by a worker now (not waiting in the queue).",
    ["service"],
    registry=REGISTRY,
)
MODEL_LOADED = Gauge(
    "asr_model_loaded",
    "Instances of a model loaded in memory (0: none).",
    ["service", "model", "device", "compute_type"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "asr_batch_size",
    "Items per inference batch.",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "asr_cache_requests",
    "Cache look-ups by result (hit or miss).",
    ["service", "cache", "result"],
    registry=REGISTRY,
)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> int:
    """Serve /metrics on `port` (0 = do not serve). Returns the port or 0."""
    if not port:
        return 0
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server.server_port


def record_work(service: str, audio_seconds: float, processing_seconds: float) -> None:
    """Record one finished piece of work: audio handled and its real-time factor."""
    if audio_seconds > 0:
        AUDIO_SECONDS.labels(service).inc(audio_seconds)
        REAL_TIME_FACTOR.labels(service).observe(processing_seconds / audio_seconds)


def gauge_reporter(service: str) -> Callable[[int, int], None]:
    """An `on_change` callback feeding the service's queue-depth and busy-worker gauges."""

    def report(waiting: int, running: int) -> None:
        QUEUE_DEPTH.labels(service).set(waiting)
        BUSY_WORKERS.labels(service).set(running)

    return report


def record_cache(service: str, cache: str, hit: bool) -> None:
    CACHE_REQUESTS.labels(service, cache, "hit" if hit else "miss").inc()


_UNMETERED = ("/grpc.health.v1.", "/grpc.reflection.")


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts requests and times them (for streams: until the last response is sent)."""

    def __init__(self, service: str):
        self._service = service

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_UNMETERED):
            return handler  # probes and reflection would drown the request metrics
        method = handler_call_details.method.rsplit("/", 1)[-1]
        service = self._service

        def finish(started: float, context: grpc.ServicerContext, failed: bool) -> None:
            code = _code_name(context, failed)
            REQUESTS.labels(service, method, code).inc()
            LATENCY.labels(service, method, code).observe(time.perf_counter() - started)
            IN_FLIGHT.labels(service, method).dec()

        def wrap_unary(behavior: Callable) -> Callable:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                started, failed = time.perf_counter(), True
                IN_FLIGHT.labels(service, method).inc()
                try:
                    response = behavior(request, context)
                    failed = False
                    return response
                finally:
                    finish(started, context, failed)

            return wrapped

        def wrap_stream(behavior: Callable) -> Callable:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started, failed = time.perf_counter(), True
                IN_FLIGHT.labels(service, method).inc()
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    finish(started, context, failed)

            return wrapped

        return rewrapped(
            handler,
            lambda behavior, kind: (
                wrap_stream(behavior) if kind.endswith("_stream") else wrap_unary(behavior)
            ),
        )


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    try:
        code = context.code()
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # grpc stores an int after abort in some versions
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if failed and not context.is_active():
        # A response stream closed because nobody was left to send to: gRPC drops the handler's
        # generator without a status of its own.
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN" if failed else "OK"
