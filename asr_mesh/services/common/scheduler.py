"""Admission control: a fixed number of workers and a bounded queue in front of them.

A request that finds every worker busy waits in the queue; one that finds the queue full is
refused at once with `Overloaded` (RESOURCE_EXHAUSTED with a retry-after hint) instead of
piling up until its deadline passes. A waiter leaves the queue as soon as its caller goes away
(`cancel` is set: `Cancelled`) or its deadline passes (`DeadlineExceeded`), so abandoned
requests never hold a place. Queue depth and work in progress are reported through a callback
so the server can export them (`asr_queue_depth` drives autoscaling).

Servicers take the slot as soon as the request's config has arrived, *before* reading the
audio, so a refused or waiting request never holds its upload in memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from asr_mesh.services.common.domain_errors import Cancelled, DeadlineExceeded, Draining, Overloaded

WAIT_SLICE_S = 0.1
"""A waiter re-checks its cancel event and deadline at least this often."""
_NO_DEADLINE_S = 365 * 24 * 3600.0
"""gRPC reports a call without a deadline as one that far (or farther) away."""


def rpc_watch(context: Any) -> tuple[threading.Event, float | None]:
    """`(cancel, timeout)` for `WorkQueue.slot` from a gRPC servicer context.

    `cancel` is set when the RPC ends for any reason (the caller cancelled or went away, the
    deadline passed, the call finished); `timeout` is the time left before the call's deadline,
    None without one.
    """
    cancel = threading.Event()
    if not context.add_callback(cancel.set):
        cancel.set()  # the RPC is already over
    remaining = context.time_remaining()
    timeout = None if remaining is None or remaining > _NO_DEADLINE_S else max(remaining, 0.0)
    return cancel, timeout


class WorkQueue:
    """`with queue.slot(cancel, timeout) as waited:` runs the body on one of `workers` slots."""

    def __init__(
        self,
        workers: int,
        max_queued: int,
        on_change: Callable[[int, int], None] | None = None,
        typical_job_s: float = 10.0,
        *,
        name: str = "the service",
    ):
        if workers < 1 or max_queued < 0:
            raise ValueError("workers must be >= 1 and max_queued >= 0")
        self.workers = workers
        self.max_queued = max_queued
        self.name = name
        self._on_change = on_change or (lambda waiting, running: None)
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()  # one ticket per waiter, in arrival order
        self._running = 0
        self._job_s = typical_job_s  # running mean of job durations, for retry-after hints

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    def retry_after(self) -> float:
        """Seconds until a slot is likely free: queued jobs ahead, shared across workers."""
        return max(1.0, round(self._job_s * (len(self._queue) + 1) / self.workers, 1))

    @contextmanager
    def slot(
        self, cancel: threading.Event | None = None, timeout: float | None = None
    ) -> Iterator[float]:
        """Hold a worker slot for the body; yields seconds spent waiting in the queue.

        Raises `Overloaded` at once when the queue is full, `Cancelled` when `cancel` is set
        while waiting, and `DeadlineExceeded` when `timeout` seconds pass without a free slot
        (None: no limit). A waiter that gives up leaves the queue before raising.
        """
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._cond:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"request cancelled before entering the {self.name} queue")
            # First come, first served: a free worker goes straight to a newcomer only when
            # nobody is queued; otherwise the newcomer queues behind the waiters already there.
            if self._running >= self.workers or self._queue:
                if len(self._queue) >= self.max_queued:
                    raise Overloaded(
                        f"{self.name} is at capacity ({self._running} running, "
                        f"{len(self._queue)} queued); retry later",
                        retry_after_s=self.retry_after(),
                        metadata={"queued": str(len(self._queue)), "running": str(self._running)},
                    )
                ticket = object()
                self._queue.append(ticket)
                self._notify()
                try:
                    self._wait_for_turn(ticket, cancel, deadline)
                finally:
                    # Admitted or giving up, the ticket leaves the queue; the next waiter may
                    # now be at the head with a worker free for it.
                    self._queue.remove(ticket)
                    self._notify()
                    self._cond.notify_all()
            self._running += 1
            self._notify()
        waited = time.perf_counter() - started
        began = time.perf_counter()
        try:
            yield waited
        finally:
            with self._cond:
                self._running -= 1
                self._job_s = 0.8 * self._job_s + 0.2 * (time.perf_counter() - began)
                self._notify()
                self._cond.notify_all()  # the head of the queue must be the one to wake

    def _wait_for_turn(
        self, ticket: object, cancel: threading.Event | None, deadline: float | None
    ) -> None:
        """Wait (lock held, released while sleeping) until `ticket` heads the queue with a worker
        free, or the caller gives up. A caller that gave up is never admitted."""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            # The deadline first: gRPC also fires the cancel callback when a deadline passes.
            if left is not None and left <= 0:
                raise DeadlineExceeded(
                    f"the deadline passed while waiting in the {self.name} queue "
                    f"({self._running} running, {len(self._queue)} queued)"
                )
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"request cancelled while waiting in the {self.name} queue")
            if self._queue[0] is ticket and self._running < self.workers:
                return
            self._cond.wait(WAIT_SLICE_S if left is None else min(WAIT_SLICE_S, left))

    def _notify(self) -> None:
        self._on_change(len(self._queue), self._running)


# --------------------------------------------------------------------------- event-loop admission

CallerKey = Callable[[Any], str]
"""Maps a grpc.aio servicer context to the caller a fair queue shares capacity by."""

caller_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "asr_caller", default=None
)
"""An authenticating interceptor sets this (the identity its token maps to) before the handler
runs; interceptors of a grpc.aio server run in the handler's task, so the handler sees it."""


def caller_identity(metadata: Any, peer: str) -> str:
    """Who is asking, for fairness: an authenticated identity when there is one (`caller_override`),
    else a hash of the bearer token, else the peer's host and user agent (both chosen by the
    client: without tokens, fairness is only as good as callers are honest). Pure; `metadata` is
    (key, value) pairs."""
    who = caller_override.get()
    if who:
        return f"id:{who}"
    pairs: dict[str, str] = {}
    for key, value in metadata or ():
        pairs.setdefault(key.lower(), value if isinstance(value, str) else value.decode("latin-1"))
    auth = pairs.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return "token:" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:16]
    host = peer.rsplit(":", 1)[0] if peer.count(":") >= 1 and not peer.startswith("unix") else peer
    return f"peer:{host}|{pairs.get('user-agent', '')}"


def context_caller(context: Any) -> str:
    """`caller_identity` of a grpc.aio (or sync) servicer context."""
    try:
        metadata = context.invocation_metadata()
    except Exception:  # noqa: BLE001
        metadata = ()
    try:
        peer = context.peer() or ""
    except Exception:  # noqa: BLE001
        peer = ""
    return caller_identity(metadata, peer)


class FairQueue:
    """Asyncio admission: `capacity` chains at once, up to `max_queued` waiting, fair per caller.

    Waiters are kept per caller and admitted round-robin across callers, so one caller sending
    a hundred requests delays another caller's single request by at most one turn per slot.
    Within a caller, first come first served. A waiter leaves the queue when its task is
    cancelled (its RPC ended) or its timeout passes (`DeadlineExceeded`); one that finds the
    queue full gets `Overloaded` with a retry-after hint. `close()` (drain) hands every waiter
    back with `Draining` (UNAVAILABLE + RetryInfo) and refuses newcomers the same way.

    Everything runs on one event loop: no locks.
    """

    def __init__(
        self,
        capacity: int,
        max_queued: int,
        *,
        name: str = "the gateway",
        on_change: Callable[[int, int], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
        on_reject: Callable[[str], None] | None = None,
        typical_job_s: float = 5.0,
    ):
        if capacity < 1 or max_queued < 0:
            raise ValueError("capacity must be >= 1 and max_queued >= 0")
        self.capacity = capacity
        self.max_queued = max_queued
        self.name = name
        self._on_change = on_change or (lambda waiting, running: None)
        self._on_wait = on_wait or (lambda seconds: None)
        self._on_reject = on_reject or (lambda reason: None)
        self._queues: dict[
            str, deque[asyncio.Future]
        ] = {}  # caller → waiters; dict order = turn order
        self._waiting = 0
        self._running = 0
        self._closed: str | None = None
        self._job_s = typical_job_s

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def retry_after(self) -> float:
        return max(1.0, round(self._job_s * (self._waiting + 1) / self.capacity, 1))

    def close(self, reason: str = "the gateway is shutting down") -> int:
        """Refuse newcomers and hand every waiter back with `Draining`; returns how many."""
        self._closed = reason
        handed = 0
        for waiters in self._queues.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(self._draining())
                    handed += 1
        self._queues.clear()
        self._waiting = 0
        self._notify()
        return handed

    def _draining(self) -> Draining:
        return Draining(f"{self._closed}; the request was not started: retry it", retry_after_s=2.0)

    @asynccontextmanager
    async def slot(self, caller: str, timeout: float | None = None) -> AsyncIterator[float]:
        """Hold one of `capacity` slots for the body; yields seconds spent queued."""
        if self._closed:
            raise self._draining()
        started = time.perf_counter()
        if self._running < self.capacity and self._waiting == 0:
            self._running += 1
        else:
            if self._waiting >= self.max_queued:
                self._on_reject("full")
                raise Overloaded(
                    f"{self.name} queue is full ({self._running} running, {self._waiting} queued); "
                    "retry later",
                    retry_after_s=self.retry_after(),
                    metadata={"queued": str(self._waiting), "running": str(self._running)},
                )
            fut = asyncio.get_running_loop().create_future()
            self._queues.setdefault(caller, deque()).append(fut)
            self._waiting += 1
            self._notify()
            try:
                done, _ = await asyncio.wait({fut}, timeout=timeout)
            except asyncio.CancelledError:
                self._abandon(caller, fut)
                raise
            if not done:
                self._abandon(caller, fut)
                raise DeadlineExceeded(
                    f"the deadline passed while waiting in {self.name} queue "
                    f"({self._running} running, {self._waiting} queued)"
                )
            fut.result()  # Draining when the queue was closed under it; else the slot is ours
        waited = time.perf_counter() - started
        self._on_wait(waited)
        self._notify()
        began = time.perf_counter()
        try:
            yield waited
        finally:
            self._job_s = 0.8 * self._job_s + 0.2 * (time.perf_counter() - began)
            self._release()

    def _abandon(self, caller: str, fut: asyncio.Future) -> None:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._release()  # granted just as the caller gave up: pass the slot on
            return
        fut.cancel()
        waiters = self._queues.get(caller)
        if waiters is not None and fut in waiters:
            waiters.remove(fut)
            self._waiting -= 1
            if not waiters:
                del self._queues[caller]
        self._notify()

    def _release(self) -> None:
        self._running -= 1
        while self._running < self.capacity and self._queues:
            caller = next(iter(self._queues))
            waiters = self._queues.pop(caller)
            fut = waiters.popleft()
            self._waiting -= 1
            if waiters:
                self._queues[caller] = waiters  # to the back of the round
            if fut.done():
                continue
            self._running += 1
            fut.set_result(None)
        self._notify()

    def _notify(self) -> None:
        self._on_change(self._waiting, self._running)
