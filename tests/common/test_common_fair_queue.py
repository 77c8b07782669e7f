"""FairQueue (asr_mesh/services/common/scheduler.py): the gateway's event-loop admission, pure
asyncio."""

from __future__ import annotations

import asyncio

import pytest

from asr_mesh.services.common.errors import DeadlineExceeded, Draining, Overloaded
from asr_mesh.services.common.scheduler import FairQueue


def run(coro):
    return asyncio.run(coro)


async def _hold(
    queue: FairQueue,
    caller: str,
    order: list[str],
    release: asyncio.Event,
    timeout: float | None = None,
) -> None:
    async with queue.slot(caller, timeout):
        order.append(caller)
        await release.wait()


def test_capacity_is_never_exceeded_and_every_waiter_runs():
    async def scenario():
        queue = FairQueue(2, 10)
        running, peak = 0, 0

        async def job():
            nonlocal running, peak
            async with queue.slot("c"):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(job() for _ in range(10)))
        return peak, queue.running, queue.waiting

    assert run(scenario()) == (2, 0, 0)


def test_turns_alternate_between_callers():
    async def scenario():
        queue, order, release = FairQueue(1, 10), [], asyncio.Event()
        tasks = [asyncio.ensure_future(_hold(queue, "a", order, release))]
        await asyncio.sleep(0)
        for caller in ("a", "a", "a", "b", "b"):
            tasks.append(asyncio.ensure_future(_hold(queue, caller, order, release)))
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)
        return order

    assert run(scenario()) == ["a", "a", "b", "a", "b", "a"]


def test_a_full_queue_is_overloaded_with_a_hint():
    async def scenario():
        queue, order, release = FairQueue(1, 1), [], asyncio.Event()
        first = asyncio.ensure_future(_hold(queue, "a", order, release))
        second = asyncio.ensure_future(_hold(queue, "a", order, release))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as refused:
            async with queue.slot("b"):
                pass
        release.set()
        await asyncio.gather(first, second)
        return refused.value

    refused = run(scenario())
    assert refused.retry_after_s >= 1.0 and "queue is full" in refused.message


def test_timeouts_and_cancels_leave_the_queue_and_never_leak_a_slot():
    async def scenario():
        queue, order, release = FairQueue(1, 5), [], asyncio.Event()
        holder = asyncio.ensure_future(_hold(queue, "a", order, release))
        await asyncio.sleep(0)
        with pytest.raises(DeadlineExceeded):
            async with queue.slot("b", timeout=0.05):
                pass
        cancelled = asyncio.ensure_future(_hold(queue, "c", order, release))
        await asyncio.sleep(0.01)
        assert queue.waiting == 1
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert queue.waiting == 0
        release.set()
        await holder
        async with queue.slot("d"):  # the slot came back
            order.append("d")
        return order, queue.running

    assert run(scenario()) == (["a", "d"], 0)


def test_a_slot_granted_as_its_waiter_gives_up_is_passed_on():
    async def scenario():
        queue, order, release = FairQueue(1, 5), [], asyncio.Event()
        holder = asyncio.ensure_future(_hold(queue, "a", order, release))
        await asyncio.sleep(0)
        quitter = asyncio.ensure_future(_hold(queue, "b", order, release))
        patient = asyncio.ensure_future(_hold(queue, "c", order, release))
        await asyncio.sleep(0.01)
        release.set()
        await holder  # releases: the slot is handed to b's future...
        quitter.cancel()  # ...and b gives up before its task resumes
        await asyncio.gather(quitter, patient, return_exceptions=True)
        return order, queue.running, queue.waiting

    order, running, waiting = run(scenario())
    assert "c" in order and running == 0 and waiting == 0


def test_close_hands_every_waiter_back_and_refuses_newcomers():
    async def scenario():
        queue, order, release = FairQueue(1, 5), [], asyncio.Event()
        holder = asyncio.ensure_future(_hold(queue, "a", order, release))
        await asyncio.sleep(0)
        waiters = [asyncio.ensure_future(_hold(queue, c, order, release)) for c in "bc"]
        await asyncio.sleep(0.01)
        assert queue.close("stopping") == 2
        results = await asyncio.gather(*waiters, return_exceptions=True)
        with pytest.raises(Draining):
            async with queue.slot("d"):
                pass
        release.set()
        await holder  # the running one finishes normally
        return results, order

    results, order = run(scenario())
    assert all(isinstance(r, Draining) and r.retry_after_s > 0 for r in results)
    assert order == ["a"]
