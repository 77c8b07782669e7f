"""Admission control: a fixed number of workers and a bounded queue in front of them.

A request that finds every worker busy waits in the queue; one that finds the queue full is
refused at once with `Overloaded` (RESOURCE_EXHAUSTED with a retry-after hint) instead of
piling up until its deadline passes. Queue depth and work in progress are reported through a
callback so the server can export them (`asr_queue_depth` drives autoscaling).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from services.common.errors import Overloaded


class WorkQueue:
    """`with queue.slot() as waited:` runs the body on one of `workers` slots."""

    def __init__(self, workers: int, max_queued: int,
                 on_change: Callable[[int, int], None] | None = None,
                 typical_job_s: float = 10.0):
        if workers < 1 or max_queued < 0:
            raise ValueError("workers must be >= 1 and max_queued >= 0")
        self.workers = workers
        self.max_queued = max_queued
        self._on_change = on_change or (lambda waiting, running: None)
        self._cond = threading.Condition()
        self._waiting = 0
        self._running = 0
        self._job_s = typical_job_s  # running mean of job durations, for retry-after hints

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def retry_after(self) -> float:
        """Seconds until a slot is likely free: queued jobs ahead, shared across workers."""
        return max(1.0, round(self._job_s * (self._waiting + 1) / self.workers, 1))

    @contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[float]:
        """Hold a worker slot for the body; yields seconds spent waiting in the queue."""
        started = time.perf_counter()
        with self._cond:
            if self._running >= self.workers:
                if self._waiting >= self.max_queued:
                    raise Overloaded(
                        f"transcription is at capacity ({self._running} running, "
                        f"{self._waiting} queued); retry later",
                        retry_after_s=self.retry_after(),
                        metadata={"queued": str(self._waiting), "running": str(self._running)},
                    )
                self._waiting += 1
                self._notify()
                try:
                    if not self._cond.wait_for(lambda: self._running < self.workers, timeout):
                        raise Overloaded("no transcription worker became free in time",
                                         retry_after_s=self.retry_after())
                finally:
                    self._waiting -= 1
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
                self._cond.notify()

    def _notify(self) -> None:
        self._on_change(self._waiting, self._running)
