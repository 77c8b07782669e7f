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

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from services.common import metrics
from services.common.errors import Cancelled, DeadlineExceeded, Overloaded

WAIT_SLICE_S = 0.1
"""A waiter re-checks its cancel event and deadline at least this often."""
_NO_DEADLINE_S = 365 * 24 * 3600.0
"""gRPC reports a call without a deadline as one that far (or farther) away."""


def gauge_reporter(service: str) -> Callable[[int, int], None]:
    """An `on_change` callback feeding the service's queue-depth and busy-worker gauges."""

    def report(waiting: int, running: int) -> None:
        metrics.QUEUE_DEPTH.labels(service).set(waiting)
        metrics.BUSY_WORKERS.labels(service).set(running)

    return report


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

    def __init__(self, workers: int, max_queued: int,
                 on_change: Callable[[int, int], None] | None = None,
                 typical_job_s: float = 10.0, *, name: str = "the service"):
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
    def slot(self, cancel: threading.Event | None = None,
             timeout: float | None = None) -> Iterator[float]:
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

    def _wait_for_turn(self, ticket: object, cancel: threading.Event | None,
                       deadline: float | None) -> None:
        """Wait (lock held, released while sleeping) until `ticket` heads the queue with a worker
        free, or the caller gives up. A caller that gave up is never admitted."""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            # The deadline first: gRPC also fires the cancel callback when a deadline passes.
            if left is not None and left <= 0:
                raise DeadlineExceeded(
                    f"the deadline passed while waiting in the {self.name} queue "
                    f"({self._running} running, {len(self._queue)} queued)")
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"request cancelled while waiting in the {self.name} queue")
            if self._queue[0] is ticket and self._running < self.workers:
                return
            self._cond.wait(WAIT_SLICE_S if left is None else min(WAIT_SLICE_S, left))

    def _notify(self) -> None:
        self._on_change(len(self._queue), self._running)

