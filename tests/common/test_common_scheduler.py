"""Admission control: the bounded work queue, its cancellation, deadlines and gauges."""

from __future__ import annotations

import threading
import time

import pytest

from asr_mesh.services.common import metrics
from asr_mesh.services.common.errors import Cancelled, DeadlineExceeded, Overloaded
from asr_mesh.services.common.metrics import gauge_reporter
from asr_mesh.services.common.scheduler import WorkQueue, rpc_watch


class Holder:
    """Keeps one slot of `queue` busy until `release()`."""

    def __init__(self, queue: WorkQueue):
        self._release, entered = threading.Event(), threading.Event()

        def hold() -> None:
            with queue.slot():
                entered.set()
                self._release.wait(10)

        self._thread = threading.Thread(target=hold)
        self._thread.start()
        assert entered.wait(5)

    def release(self) -> None:
        self._release.set()
        self._thread.join(5)


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_full_queue_refuses_at_once_naming_the_service():
    queue = WorkQueue(workers=1, max_queued=0, name="diarization")
    holder = Holder(queue)
    started = time.monotonic()
    with pytest.raises(Overloaded, match="diarization is at capacity") as err:
        with queue.slot(timeout=30):
            pass
    assert time.monotonic() - started < 1.0
    assert err.value.retry_after_s >= 1.0
    holder.release()


def test_a_cancelled_waiter_leaves_the_queue():
    depths = []
    queue = WorkQueue(workers=1, max_queued=1, on_change=lambda w, r: depths.append((w, r)))
    holder = Holder(queue)
    cancel, outcome = threading.Event(), []

    def wait() -> None:
        try:
            with queue.slot(cancel=cancel):
                outcome.append("ran")
        except Cancelled as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert wait_until(lambda: queue.waiting == 1)
    cancel.set()
    waiter.join(2)
    assert not waiter.is_alive(), "the cancelled waiter stayed in the queue"
    assert isinstance(outcome[0], Cancelled) and "cancelled" in outcome[0].message
    assert queue.waiting == 0 and queue.running == 1  # the running job is untouched
    assert depths[-1] == (0, 1)  # the gauge saw the queue shrink
    with pytest.raises(DeadlineExceeded):  # its place is free again: waits instead of Overloaded
        with queue.slot(timeout=0.05):
            pass
    holder.release()
    assert queue.running == 0


def test_a_waiter_whose_deadline_passes_gets_deadline_exceeded_and_leaves():
    queue = WorkQueue(workers=1, max_queued=1)
    holder = Holder(queue)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline passed while waiting"):
        with queue.slot(timeout=0.3):
            pass
    assert 0.25 <= time.monotonic() - started < 2.0
    assert queue.waiting == 0
    holder.release()


def test_a_waiter_gets_the_slot_when_it_frees_and_reports_its_wait():
    queue = WorkQueue(workers=1, max_queued=2)
    holder = Holder(queue)
    waited = []

    def wait() -> None:
        with queue.slot(cancel=threading.Event(), timeout=10) as seconds:
            waited.append(seconds)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert wait_until(lambda: queue.waiting == 1)
    time.sleep(0.2)
    holder.release()
    waiter.join(5)
    assert waited and waited[0] >= 0.2
    assert queue.waiting == 0 and queue.running == 0


def test_gauge_reporter_feeds_the_services_gauges():
    report = gauge_reporter("test-service")
    report(3, 2)
    assert metrics.REGISTRY.get_sample_value("asr_queue_depth", {"service": "test-service"}) == 3
    assert metrics.REGISTRY.get_sample_value("asr_busy_workers", {"service": "test-service"}) == 2


class FakeContext:
    def __init__(self, remaining: float, active: bool = True):
        self.callbacks = []
        self._remaining, self._active = remaining, active

    def add_callback(self, callback) -> bool:
        if not self._active:
            return False
        self.callbacks.append(callback)
        return True

    def time_remaining(self) -> float:
        return self._remaining


def test_rpc_watch_links_the_cancel_event_and_deadline_to_the_call():
    context = FakeContext(remaining=12.5)
    cancel, timeout = rpc_watch(context)
    assert timeout == 12.5 and not cancel.is_set()
    for callback in context.callbacks:  # gRPC runs these when the call ends or is cancelled
        callback()
    assert cancel.is_set()
    assert rpc_watch(FakeContext(remaining=1e12))[1] is None  # no deadline
    assert rpc_watch(FakeContext(remaining=5, active=False))[0].is_set()  # already over


def test_waiters_are_admitted_in_arrival_order_even_when_a_newcomer_arrives_as_a_slot_frees():
    queue = WorkQueue(workers=1, max_queued=5)
    held = queue.slot()
    held.__enter__()  # the only worker, held by this thread
    order: list[str] = []

    def wait(name: str) -> None:
        with queue.slot(timeout=10):
            order.append(name)

    waiters = []
    for count, name in enumerate(["first", "second"], start=1):
        waiters.append(threading.Thread(target=wait, args=(name,)))
        waiters[-1].start()
        assert wait_until(lambda count=count: queue.waiting == count)
    # The slot frees and a newcomer asks for one before any woken waiter can run: the queue's
    # (re-entrant) lock is held across both, which is the race where a newcomer used to win.
    with queue._cond:
        held.__exit__(None, None, None)
        with queue.slot(timeout=10):
            order.append("newcomer")
    for waiter in waiters:
        waiter.join(5)
    assert order == ["first", "second", "newcomer"]
    assert queue.waiting == 0 and queue.running == 0


def test_an_already_cancelled_request_is_refused_even_with_a_free_worker():
    changes = []
    queue = WorkQueue(workers=2, max_queued=2, on_change=lambda w, r: changes.append((w, r)))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        with queue.slot(cancel=cancel):
            pytest.fail("a cancelled request was admitted")
    assert queue.running == 0 and queue.waiting == 0
    assert all(running == 0 for _, running in changes)
