"""Request streams: a finished upload told apart from a cancelled, cut-off or stalled one."""

from __future__ import annotations

import threading
import time

import pytest

from asr_mesh.services.common import streams
from asr_mesh.services.common.domain_errors import Cancelled, Category, InvalidInput, UploadStalled
from asr_mesh.services.common.streams import UploadMeter, stall_guarded


def meter(declared: int, ended: threading.Event | None = None) -> UploadMeter:
    return UploadMeter(declared, ended or threading.Event(), what="upload", field="config.size")


@pytest.mark.parametrize("declared", [0, 10])
def test_a_complete_upload_returns_its_size(declared):
    m = meter(declared)
    for piece in (3, 3, 4):
        m.add(piece)
    assert m.finish() == 10


def test_without_a_declared_size_the_end_of_the_stream_is_trusted():
    m = meter(0)
    m.add(4)
    assert m.finish() == 4


def test_a_short_upload_names_both_numbers_after_waiting_for_a_cancel(monkeypatch):
    monkeypatch.setattr(streams, "CANCEL_NOTICE_GRACE_S", 0.2)
    m = meter(10)
    m.add(4)
    started = time.monotonic()
    with pytest.raises(
        InvalidInput, match="upload ended after 4 of the 10 bytes declared in config.size"
    ):
        m.finish()
    assert time.monotonic() - started >= 0.2


def test_a_cancel_noticed_during_the_grace_period_is_a_cancel():
    ended = threading.Event()
    m = meter(10, ended)
    m.add(4)
    threading.Timer(0.05, ended.set).start()  # the cancel notice lands just after the stream ended
    with pytest.raises(Cancelled):
        m.finish()


@pytest.mark.parametrize("declared", [0, 4, 10])
def test_an_upload_whose_call_is_already_over_is_cancelled(declared):
    ended = threading.Event()
    m = meter(declared, ended)
    m.add(4)
    ended.set()
    with pytest.raises(Cancelled, match="cancelled the request during the upload"):
        m.finish()


def test_outgrowing_the_declared_size_is_refused_at_once():
    m = meter(5)
    m.add(5)
    with pytest.raises(InvalidInput, match="longer than the 5 bytes declared"):
        m.add(1)


def test_a_negative_declared_size_is_refused():
    with pytest.raises(InvalidInput, match="config.size must not be negative"):
        meter(-1)


# -- stall_guarded -------------------------------------------------------------------------


def paced(items, pause_s: float = 0.0, pause_before: int = -1):
    for index, item in enumerate(items):
        if index == pause_before:
            time.sleep(pause_s)
        yield item


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "request-stream-reader" and t.is_alive()]


def wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_steady_stream_passes_through_whole_and_in_order():
    assert list(stall_guarded(iter(range(50)), 5.0, setting="S")) == list(range(50))
    assert wait_for(lambda: not reader_threads())


def test_a_stream_that_pauses_past_the_idle_time_is_refused_with_the_setting_named():
    guarded = stall_guarded(
        paced([1, 2, 3], pause_s=2.0, pause_before=2), 0.3, setting="ASR_X_UPLOAD_IDLE_TIMEOUT_S"
    )
    assert next(guarded) == 1 and next(guarded) == 2
    started = time.monotonic()
    with pytest.raises(
        UploadStalled, match=r"no message arrived for 0\.3 s \(ASR_X_UPLOAD_IDLE_TIMEOUT_S\)"
    ) as err:
        next(guarded)
    assert 0.25 < time.monotonic() - started < 3.0
    assert err.value.category is Category.DEADLINE


def test_a_slow_handler_is_not_mistaken_for_a_stalled_caller():
    received = []
    for item in stall_guarded(iter(range(3)), 0.3, setting="S"):
        time.sleep(0.6)  # busy elsewhere (the admission queue, say) longer than the idle time
        received.append(item)
    assert received == list(range(3))


def test_errors_of_the_stream_reach_the_handler_as_they_are():
    def failing():
        yield 1
        raise ValueError("stream broke")

    guarded = stall_guarded(failing(), 5.0, setting="S")
    assert next(guarded) == 1
    with pytest.raises(ValueError, match="stream broke"):
        next(guarded)


def test_zero_turns_the_guard_off():
    assert list(stall_guarded(paced([1, 2], pause_s=0.3, pause_before=1), 0, setting="S")) == [1, 2]


def test_a_handler_that_gives_up_early_leaves_no_reader_thread_behind():
    for _ in stall_guarded(iter(range(1000)), 5.0, setting="S"):
        break  # the reader is blocked on a full pipe at this point
    assert wait_for(lambda: not reader_threads()), "the reader thread outlived its handler"


def test_nothing_is_read_before_the_handler_asks():
    """A handler waiting for a worker slot must not hold its caller's audio."""
    read = []

    def counted():
        for item in range(10):
            read.append(item)
            yield item

    guarded = stall_guarded(counted(), 5.0, setting="S")
    assert next(guarded) == 0
    time.sleep(0.3)  # the handler is busy (queued for a worker, say)
    assert read == [0]
    assert next(guarded) == 1 and read == [0, 1]
    guarded.close()
    assert wait_for(lambda: not reader_threads())
