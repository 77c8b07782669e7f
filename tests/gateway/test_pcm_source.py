"""PCM read while it is still being written: what lets transcription start before decoding ends."""

from __future__ import annotations

import threading
import time

import pytest

from asr_mesh.services.common.domain_errors import Cancelled
from asr_mesh.services.gateway.pcm_source import GrowingPcm, StaticPcm


def writer(
    pcm: GrowingPcm, pieces: list[bytes], pause_s: float = 0.01, fail: Exception | None = None
):
    def run():
        pcm.announce(len(b"".join(pieces)) / 32000)
        for piece in pieces:
            time.sleep(pause_s)
            pcm.write(piece)
        pcm.fail(fail) if fail else pcm.finish()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_reader_gets_every_byte_in_whole_samples_while_it_is_written(tmp_path):
    pcm = GrowingPcm(tmp_path / "pcm")
    data = bytes(range(256)) * 40
    pieces = [data[k : k + 333] for k in range(0, len(data), 333)]  # odd sizes split samples
    thread = writer(pcm, pieces)
    got = list(pcm.chunks(1000))
    thread.join()
    assert b"".join(got) == data
    assert all(len(c) % 2 == 0 for c in got[:-1]) and len(got) > 5  # read as it came
    assert pcm.complete and pcm.duration_hint == len(data) / 32000
    assert bytes(pcm.mapped()) == data
    pcm.close()


def test_read_waits_for_its_bytes_and_is_short_only_at_the_end(tmp_path):
    pcm = GrowingPcm(tmp_path / "pcm")
    data = b"\x01\x02" * 5000
    thread = writer(pcm, [data[k : k + 1000] for k in range(0, len(data), 1000)])
    assert pcm.read(8000, 9000) == data[8000:9000]  # waited for them
    assert pcm.read(9500, 20000) == data[9500:]
    thread.join()
    pcm.close()


def test_readers_of_failed_decoding_stop_with_cancelled_and_the_duration_is_announced(tmp_path):
    pcm = GrowingPcm(tmp_path / "pcm")
    thread = writer(pcm, [b"\0\0" * 100] * 3, fail=RuntimeError("corrupt frame"))
    pcm.wait_until_started()
    assert pcm.duration_hint == pytest.approx(600 / 32000)
    with pytest.raises(Cancelled, match="corrupt frame"):
        list(pcm.chunks())
    thread.join()
    with pytest.raises(RuntimeError):
        pcm.mapped()
    pcm.close()


def test_static_pcm_is_the_same_interface_over_bytes():
    pcm = StaticPcm(b"\x01\x00" * 1000)
    assert pcm.complete and pcm.size == 2000 and pcm.duration_hint == 1000 / 16000
    assert b"".join(pcm.chunks(301)) == b"\x01\x00" * 1000
    assert all(len(c) == 300 for c in list(pcm.chunks(301))[:-1])
    assert pcm.read(10, 20) == (b"\x01\x00" * 1000)[10:20]
