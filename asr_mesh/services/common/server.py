"""The server factory pieces every service shares: interceptors, health, reflection, shutdown.

A service's `create_server(settings, ...)` calls `build_server` with its servicer registration
and gets a started server back on the requested (or a free) port. `build_aio_server` is the
same for an event-loop (`grpc.aio`) server (the gateway): it takes extra interceptors (an auth
check) and server credentials (TLS; None = plaintext), see asr_mesh/services/common/aio.py.
`serve_forever` is what a service's `main()` runs: it prints a ready line, drains on SIGTERM and
exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter

from asr_mesh.services.common.aio import (
    AioErrorMappingInterceptor,
    AioMetricsInterceptor,
    AioServerHandle,
    AioStallGuardInterceptor,
    StreamLimits,
    run_on_loop,
)
from asr_mesh.services.common.errors import ErrorMappingInterceptor
from asr_mesh.services.common.handlers import rewrapped
from asr_mesh.services.common.limits import AioCapsInterceptor, CapsInterceptor, RequestCaps
from asr_mesh.services.common.metrics import MetricsInterceptor, start_metrics_server
from asr_mesh.services.common.security import (
    SecurityConfigError,
    bind,
    server_credentials,
    start_health_server,
)
from asr_mesh.services.common.security import aio_server_interceptors as aio_auth_interceptors
from asr_mesh.services.common.security import server_interceptors as auth_interceptors
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.common.streams import stall_guarded
from asr_mesh.services.common.telemetry import (
    aio_server_interceptors,
    server_interceptors,
    setup_telemetry,
    shutdown_telemetry,
)

log = logging.getLogger(__name__)
SettingsT = TypeVar("SettingsT", bound=ServerSettings)

READY_PREFIX = "ASR_READY"


@dataclass
class ServerHandle:
    """A started server, the port it listens on and its health servicer."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    metrics_port: int = 0
    health_port: int = 0
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    """Called after the server has stopped (background threads of the service, say)."""
    on_drain: list[Callable[[], None]] = field(default_factory=list)
    """Called as soon as draining starts, before in-flight calls are waited for (background
    work that should move elsewhere at once rather than run out the grace period)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`."""
        self.set_serving(False)
        for hook in self.on_drain:
            hook()
        self.server.stop(grace).wait()
        for hook in self.on_stop:
            hook()


class StallGuardInterceptor(grpc.ServerInterceptor):
    """Reads the request streams of the mesh's services (`/asr.*`) through `stall_guarded`.

    Health and reflection are left alone: a reflection stream idles legitimately between a
    tool's questions.
    """

    def __init__(self, idle_timeout_s: float, setting: str):
        self._idle_timeout_s = idle_timeout_s
        self._setting = setting

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if (
            handler is None
            or not handler.request_streaming
            or self._idle_timeout_s <= 0
            or not handler_call_details.method.startswith("/asr.")
        ):
            return handler

        def guarded(behavior: Callable) -> Callable:
            def wrapped(request_iterator: Any, context: grpc.ServicerContext) -> Any:
                return behavior(
                    stall_guarded(request_iterator, self._idle_timeout_s, setting=self._setting),
                    context,
                )

            return wrapped

        return rewrapped(handler, lambda behavior, kind: guarded(behavior))


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Channel options every server of the mesh, sync or aio, is built with."""
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_s > 0:
        # No max_connection_age_grace: calls in flight (hours-long streams) finish on the old
        # connection.
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
    return options


def build_server(
    settings: ServerSettings,
    *,
    register: Callable[[grpc.Server], None],
    service_names: Iterable[str],
    serving: bool = True,
    metrics_name: str = "",
) -> ServerHandle:
    """Create, bind and start a server with the mesh's interceptors, health and reflection."""
    names = tuple(service_names)
    options = server_options(settings)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers),
        # Outermost first: the trace span sees the final status, metrics see the mapped code.
        interceptors=[
            *server_interceptors(),
            MetricsInterceptor(metrics_name or names[0].split(".")[1]),
            *auth_interceptors(settings),  # bearer tokens, when auth_token_file is set
            ErrorMappingInterceptor(),
            StallGuardInterceptor(
                settings.upload_idle_timeout_s,
                f"{settings.model_config.get('env_prefix', 'ASR_')}UPLOAD_IDLE_TIMEOUT_S",
            ),
            CapsInterceptor(RequestCaps.from_settings(settings)),  # bounded cost per request
        ],
        options=options,
        maximum_concurrent_rpcs=settings.max_workers * 4,
    )
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection_enabled:  # off by default: it maps the whole API for anyone who asks
        reflection.enable_server_reflection(
            (
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    port = bind(server, f"{settings.host}:{settings.port}", server_credentials(settings))
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    server.start()
    handle = ServerHandle(
        server=server,
        port=port,
        health=health_servicer,
        service_names=names,
        metrics_port=start_metrics_server(settings.metrics_port, settings.host),
    )
    if settings.health_port:  # plaintext health alone, for probes that cannot speak TLS
        try:
            health_server, handle.health_port = start_health_server(
                health_servicer, settings.host, settings.health_port
            )
        except OSError:
            server.stop(None)  # a server without its probe port would look dead to Kubernetes
            raise
        handle.on_stop.append(lambda: health_server.stop(None))
    handle.set_serving(serving)
    return handle


def build_aio_server(
    settings: ServerSettings,
    *,
    register: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    serving: bool = True,
    metrics_name: str = "",
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    live_methods: tuple[str, ...] = ("StreamingTranscribe",),
) -> AioServerHandle:
    """Like `build_server`, but a `grpc.aio` server on the process's event loop.

    See asr_mesh/services/common/aio.py.

    `interceptors` run inside the tracing span and outside metrics and the error map (an auth
    interceptor's refusal is traced and counted), after the bearer-token check `settings` asks
    for; `credentials` None means what `settings` asks for (TLS when a certificate is set, else
    plaintext). Reflection only when `settings.reflection_enabled`; `settings.health_port` adds
    a plaintext health-only port. Call it from any thread but the loop's; the handle is thread-safe.
    """
    if credentials is None:
        credentials = server_credentials(settings)
    names = tuple(service_names)
    options = server_options(settings)
    prefix = settings.model_config.get("env_prefix", "ASR_")
    limits = StreamLimits(
        idle_s=settings.upload_idle_timeout_s,
        min_bytes_per_s=settings.upload_min_bytes_per_s,
        rate_window_s=settings.upload_rate_window_s,
        max_duration_s=settings.upload_max_duration_s,
        setting_prefix=prefix,
    )
    chain = [
        *aio_server_interceptors(),
        *aio_auth_interceptors(settings),  # bearer tokens, when auth_token_file is set
        *interceptors,
        AioMetricsInterceptor(metrics_name or names[0].split(".")[1]),
        AioErrorMappingInterceptor(),
        AioStallGuardInterceptor(limits, live_methods),
        AioCapsInterceptor(RequestCaps.from_settings(settings)),  # bounded cost per request
    ]

    async def start() -> AioServerHandle:
        server = grpc.aio.server(interceptors=chain, options=options)
        register(server)
        health_servicer = aio_health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if settings.reflection_enabled:  # off by default: it maps the whole API for anyone who asks
            reflection.enable_server_reflection(
                (
                    *names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
        address = f"{settings.host}:{settings.port}"
        port = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
        if port == 0:
            raise OSError(f"could not bind {address}")
        await server.start()
        handle = AioServerHandle(
            server=server, port=port, health=health_servicer, service_names=names
        )
        if settings.health_port:  # plaintext health alone, for probes that cannot speak TLS
            probe = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe)
            handle.health_port = probe.add_insecure_port(f"{settings.host}:{settings.health_port}")
            if handle.health_port == 0:
                await server.stop(None)  # without its probe port it would look dead to Kubernetes
                raise OSError(
                    f"could not bind the health port {settings.host}:{settings.health_port}"
                )
            await probe.start()
            handle.on_stop.append(lambda: run_on_loop(probe.stop(None), timeout=10))
        await handle._set_serving(serving)
        return handle

    handle = run_on_loop(start(), timeout=60)
    handle.metrics_port = start_metrics_server(settings.metrics_port, settings.host)
    return handle


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when `parent_pid` (the local supervisor) dies."""
    if not parent_pid:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before we armed the signal
        os.kill(os.getpid(), signal.SIGTERM)


def serve_forever(
    handle: ServerHandle | AioServerHandle, settings: ServerSettings, service: str
) -> None:
    """Block until SIGTERM/SIGINT, then drain gracefully and flush telemetry."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            log.info(
                "%s received %s, draining for up to %.0fs",
                service,
                signal.Signals(signum).name,
                settings.grace_period_s,
            )
            stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The supervisor reads this line to learn the port (the server may have bound port 0).
    try:
        print(f"{READY_PREFIX} service={service} port={handle.port}", flush=True)
    except BrokenPipeError:  # the supervisor is gone: drain and exit like on SIGTERM
        stopping.set()
    # Timed waits, not one untimed wait: Python runs signal handlers on the main thread only,
    # and when the kernel hands SIGTERM to a gRPC or decoder thread, an untimed wait is never
    # woken to run it (seen in ~1% of SIGTERM tests). Each timeout lets the handler run.
    while not stopping.wait(0.5):
        pass
    handle.stop(settings.grace_period_s)
    shutdown_telemetry()
    log.info("%s stopped", service)


class TraceContextFilter(logging.Filter):
    """Adds the active trace and span ids (and the service name) to every log record."""

    def __init__(self, service: str):
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.service = self._service
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        return True


def run_service(
    service: str, settings_type: type[SettingsT], create: Callable[[SettingsT], Any]
) -> None:
    """What every service's `main()` does: read settings once, set up logs and traces, serve."""
    try:
        settings = settings_type()
    except ValidationError as exc:  # an operator's typo deserves a sentence, not a traceback
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"{service}: invalid configuration: {where}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    # First thing: an orphan must not spend minutes loading models for nobody.
    die_with_parent(settings.parent_pid)
    configure_logging(settings.log_level, service, settings.log_format)
    setup_telemetry(service, settings.state_dir)
    try:
        handle = create(settings)
    except SecurityConfigError as exc:  # a TLS or token file that cannot be used: a sentence
        print(f"{service}: invalid configuration: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    serve_forever(handle, settings, service)


def configure_logging(level: str, service: str = "", log_format: str = "json") -> None:
    """Structured JSON logs on stderr carrying trace_id/span_id (`text` for humans)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter(service))
    if log_format == "text":
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(service)s %(name)s [%(trace_id)s]: %(message)s"
            )
        )
    else:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(service)s %(name)s %(message)s "
                "%(trace_id)s %(span_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
