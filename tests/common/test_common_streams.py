"""UploadMeter: a finished upload told apart from a cancelled or cut-off one."""

from __future__ import annotations

import threading
import time

import pytest

from services.common import streams
from services.common.errors import Cancelled, InvalidInput
from services.common.streams import UploadMeter


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
    with pytest.raises(InvalidInput, match="upload ended after 4 of the 10 bytes declared in config.size"):
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
