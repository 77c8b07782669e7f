"""The event-loop (`grpc.aio`) half of the server pieces: loop thread, interceptors, handle.

A server built here serves every RPC as a coroutine on one event loop, so an idle upload, a
reflection stream that waits for its client, or a request waiting in an admission queue costs
a coroutine and a few kilobytes, never a thread: health checks and reflection can no longer be
starved by slow callers. Blocking work (a sync chain, a SQLite store) goes to bounded executors
the servicer owns.

The process runs one loop on a daemon thread (`shared_loop`): grpc.aio objects belong to the
loop they were made on, and tests start several servers in one process. `AioServerHandle` gives
the same thread-safe surface as the sync `ServerHandle` (`port`, `address`, `stop`,
`set_serving`, `on_stop`, `on_drain`), so callers and tests need not know which kind it is.

Interceptors mirror the sync ones: `AioErrorMappingInterceptor` (the one exception → status
map of `errors.py`), `AioMetricsInterceptor` and `AioStallGuardInterceptor`, which cuts a
request stream that is idle too long, too slow (under a bytes/s floor over a window) or open too
long in total. Health and reflection are left alone by the stall guard and the metrics.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from asr_mesh.services.common.errors import MeshError, UploadStalled, _translate, to_status
from asr_mesh.services.common.handlers import rewrapped
from asr_mesh.services.common.metrics import _UNMETERED, IN_FLIGHT, LATENCY, REQUESTS

log = logging.getLogger(__name__)
T = TypeVar("T")

# --------------------------------------------------------------------------- the loop thread

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def shared_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for grpc.aio servers and channels, started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="grpc-aio-loop", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


def run_on_loop(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the shared loop from any other thread and return its result."""
    loop = shared_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("run_on_loop called from the loop itself; await the coroutine instead")
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


# --------------------------------------------------------------------------- the handle


@dataclass
class AioServerHandle:
    """A started grpc.aio server; every method is safe to call from any thread but the loop's."""

    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1._async.HealthServicer
    service_names: tuple[str, ...]
    metrics_port: int = 0
    health_port: int = 0
    """The plaintext health-only port (`settings.health_port`), 0 when there is none."""
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    """Called (on the caller's thread) after the server has stopped."""
    on_drain: list[Callable[[], None]] = field(default_factory=list)
    """Called as soon as draining starts, before in-flight calls are waited for."""
    jobs: Any = None
    admission: Any = None
    """The gateway's admission queue (FairQueue), for metrics and tests."""
    _stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return shared_loop()

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    def set_serving(self, serving: bool) -> None:
        run_on_loop(self._set_serving(serving), timeout=10)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`."""
        if self._stopped:
            return
        self._stopped = True
        self.set_serving(False)
        for hook in self.on_drain:
            hook()
        run_on_loop(self.server.stop(grace))
        for hook in self.on_stop:
            hook()


# --------------------------------------------------------------------------- interceptors


def _guarded_method(method: str) -> bool:
    return method.startswith("/asr.")


def _rebuild(
    handler: grpc.RpcMethodHandler, wrap_unary: Callable, wrap_stream: Callable
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped.

    Unary responses by `wrap_unary`, streams by `wrap_stream`.
    """
    return rewrapped(
        handler,
        lambda behavior, kind: (
            wrap_stream(behavior) if kind.endswith("_stream") else wrap_unary(behavior)
        ),
    )


async def abort_with(context: grpc.aio.ServicerContext, error: MeshError) -> None:
    """End the call with the status (and google.rpc details) `error` maps to."""
    status = rpc_status.to_status(to_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)


class AioErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions raised by the mesh's async servicers to statuses (errors.py's one map)."""

    async def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not _guarded_method(details.method):
            return handler
        method = details.method

        async def fail(context, exc: Exception) -> None:
            await abort_with(context, _translate(exc, method))

        def wrap_unary(behavior: Callable) -> Callable:
            async def wrapped(request: Any, context: Any) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every error becomes a status
                    await fail(context, exc)

            return wrapped

        def wrap_stream(behavior: Callable) -> Callable:
            async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    await fail(context, exc)

            return wrapped

        return _rebuild(handler, wrap_unary, wrap_stream)


def _code_of(context: Any, failed: bool, cancelled: bool) -> str:
    if cancelled:
        return "CANCELLED"
    try:
        code = context.code()
    except Exception:  # noqa: BLE001
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN" if failed else "OK"


class AioMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times requests like `metrics.MetricsInterceptor`.

    Probes and reflection are excluded.
    """

    def __init__(self, service: str):
        self._service = service

    async def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_UNMETERED):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        service = self._service

        def finish(started: float, context: Any, failed: bool, cancelled: bool) -> None:
            code = _code_of(context, failed, cancelled)
            REQUESTS.labels(service, method, code).inc()
            LATENCY.labels(service, method, code).observe(time.perf_counter() - started)
            IN_FLIGHT.labels(service, method).dec()

        def wrap_unary(behavior: Callable) -> Callable:
            async def wrapped(request: Any, context: Any) -> Any:
                started, failed, cancelled = time.perf_counter(), True, False
                IN_FLIGHT.labels(service, method).inc()
                try:
                    response = await behavior(request, context)
                    failed = False
                    return response
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                finally:
                    finish(started, context, failed, cancelled)

            return wrapped

        def wrap_stream(behavior: Callable) -> Callable:
            async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
                started, failed, cancelled = time.perf_counter(), True, False
                IN_FLIGHT.labels(service, method).inc()
                try:
                    async for response in behavior(request, context):
                        yield response
                    failed = False
                except (asyncio.CancelledError, GeneratorExit):
                    cancelled = True
                    raise
                finally:
                    finish(started, context, failed, cancelled)

            return wrapped

        return _rebuild(handler, wrap_unary, wrap_stream)


@dataclass(frozen=True)
class StreamLimits:
    """Limits on one request stream. 0 disables a limit.

    - `idle_s`: longest gap between two messages;
    - `min_bytes_per_s` over `rate_window_s`: once the stream has been open a whole window,
      the bytes received during the last window must reach the floor (a trickle that never
      leaves a long gap is still cut);
    - `max_duration_s`: longest time the request stream may stay open in total.
    """

    idle_s: float = 60.0
    min_bytes_per_s: float = 0.0
    rate_window_s: float = 20.0
    max_duration_s: float = 0.0
    setting_prefix: str = "ASR_"


class StreamGuard:
    """Reads an async request stream under `StreamLimits`, raising `UploadStalled` on a breach."""

    def __init__(
        self,
        limits: StreamLimits,
        *,
        rate_limited: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._limits = limits
        self._rate_limited = rate_limited
        self._clock = clock

    def _stalled(self, sentence: str, setting: str, **metadata: str) -> UploadStalled:
        return UploadStalled(
            f"the request stream was cut: {sentence} ({self._limits.setting_prefix}{setting}); "
            "send the upload at a steady pace, or close the stream",
            metadata=metadata,
        )

    async def read(self, messages: AsyncIterator[T]) -> AsyncIterator[T]:
        lim = self._limits
        start = self._clock()
        window: deque[tuple[float, int]] = deque()  # (arrival, bytes) within the rate window
        in_window = 0
        last = start
        iterator = messages.__aiter__()
        pending: asyncio.Future | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(iterator.__anext__())
                now = self._clock()
                waits = []
                if lim.idle_s > 0:
                    waits.append(last + lim.idle_s - now)
                if self._rate_limited and lim.max_duration_s > 0:
                    waits.append(start + lim.max_duration_s - now)
                rate_on = self._rate_limited and lim.min_bytes_per_s > 0 and lim.rate_window_s > 0
                if rate_on:
                    waits.append(max(0.25, min(1.0, lim.rate_window_s / 4)))
                timeout = max(0.0, min(waits)) if waits else None
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                now = self._clock()
                if done:
                    try:
                        message = pending.result()
                    except StopAsyncIteration:
                        return
                    finally:
                        pending = None
                    size = message.ByteSize() if hasattr(message, "ByteSize") else 0
                    window.append((now, size))
                    in_window += size
                    last = now
                    yield message
                    now = self._clock()
                while window and window[0][0] < now - lim.rate_window_s:
                    in_window -= window.popleft()[1]
                if lim.idle_s > 0 and now - last >= lim.idle_s:
                    raise self._stalled(
                        f"no message arrived for {lim.idle_s:g} s",
                        "UPLOAD_IDLE_TIMEOUT_S",
                        idle_timeout_seconds=f"{lim.idle_s:g}",
                    )
                if (
                    self._rate_limited
                    and lim.max_duration_s > 0
                    and now - start >= lim.max_duration_s
                ):
                    raise self._stalled(
                        f"it stayed open longer than {lim.max_duration_s:g} s",
                        "UPLOAD_MAX_DURATION_S",
                        max_duration_seconds=f"{lim.max_duration_s:g}",
                    )
                if rate_on and now - start >= lim.rate_window_s:
                    rate = in_window / lim.rate_window_s
                    if rate < lim.min_bytes_per_s:
                        raise self._stalled(
                            f"{rate:.0f} bytes/s over the last {lim.rate_window_s:g} s is under "
                            f"the floor of {lim.min_bytes_per_s:g} bytes/s",
                            "UPLOAD_MIN_BYTES_PER_S",
                            min_bytes_per_second=f"{lim.min_bytes_per_s:g}",
                        )
        finally:
            if pending is not None and not pending.done():
                pending.cancel()


class AioStallGuardInterceptor(grpc.aio.ServerInterceptor):
    """Reads the request streams of the mesh's services (`/asr.*`) through a `StreamGuard`.

    Methods named in `live_methods` (real-time sessions such as StreamingTranscribe) get only the
    idle limit: their pace is the speaker's, and a session may last hours.
    """

    def __init__(
        self, limits: StreamLimits, live_methods: tuple[str, ...] = ("StreamingTranscribe",)
    ):
        self._limits = limits
        self._live = live_methods

    async def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not handler.request_streaming or not _guarded_method(details.method):
            return handler
        guard = StreamGuard(
            self._limits, rate_limited=details.method.rsplit("/", 1)[-1] not in self._live
        )

        def wrap_unary(behavior: Callable) -> Callable:
            async def wrapped(requests: Any, context: Any) -> Any:
                return await behavior(guard.read(requests), context)

            return wrapped

        def wrap_stream(behavior: Callable) -> Callable:
            async def wrapped(requests: Any, context: Any) -> AsyncIterator[Any]:
                async for response in behavior(guard.read(requests), context):
                    yield response

            return wrapped

        return _rebuild(handler, wrap_unary, wrap_stream)


async def in_executor(executor: Any, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking `fn(*args)` on `executor` (None: the loop's default) in a copy of the current
    context, so the active trace span follows the work onto the worker thread."""
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, ctx.run, fn, *args)
