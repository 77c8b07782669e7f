"""Pure tests for long-audio planning: windows at pauses, time mapping, VAD blocks, batch size."""

from __future__ import annotations

import numpy as np
import pytest

from asr_mesh.services.transcription import longform
from asr_mesh.services.transcription.longform import Window


def sentences(n: int, length: float = 4.5, pause: float = 1.0, start: float = 0.5):
    out, t = [], start
    for _ in range(n):
        out.append((t, t + length))
        t += length + pause
    return out


def test_windows_hold_at_most_30_s_of_speech_and_cut_at_pauses():
    speech = []
    for a, b in sentences(40):  # each sentence with a short inner pause
        speech += [(a, a + 2.0), (a + 2.15, b)]
    windows = longform.plan_windows(speech)
    assert all(w.duration <= 30.0 for w in windows)
    assert sum(len(w.pieces) for w in windows) == len(speech)
    sentence_ends = {round(b, 3) for _, b in sentences(40)}
    assert all(round(w.end, 3) in sentence_ends for w in windows)  # never inside a sentence
    assert np.mean([w.duration for w in windows[:-1]]) > 24  # and windows stay full


def test_glued_time_maps_back_to_the_file():
    window = Window(((10.0, 12.0), (20.0, 25.0)))
    assert window.duration == 7.0
    assert window.to_original(0.5) == 10.5
    assert window.to_original(2.5) == 20.5
    assert window.to_original(99) == 25.0
    assert window.after(21.0) == [(21.0, 25.0)]
    audio = np.arange(30 * 16000, dtype=np.int16)
    glued = window.samples(audio)
    assert len(glued) == 7 * 16000 and glued.dtype == np.float32


def test_long_ranges_are_split_to_fit():
    windows = longform.plan_windows([(0.0, 95.0)])
    assert all(w.duration <= 30.0 for w in windows) and windows[-1].end == 95.0


def test_vad_runs_in_blocks_without_cutting_speech_at_block_edges():
    truth = [(5.0, 9.0), (298.0, 303.0), (600.0, 604.0)]
    # Every sample holds its own second, so a detector can tell where its block starts.
    samples = (np.arange(700 * 16000) // 16000).astype(np.int16)
    blocks = []

    def detect(block: np.ndarray):
        offset = round(float(block[0]) * 32768)
        end = offset + len(block) / 16000
        blocks.append((offset, end))
        return [
            (max(a, offset) - offset, min(b, end) - offset)
            for a, b in truth
            if b > offset and a < end
        ]

    assert longform.speech_ranges(samples, detect, block_s=300.0) == truth
    assert blocks[1][0] == 298  # the block after the cut restarts where that speech began
    assert max(e - s for s, e in blocks) <= 300.0


@pytest.mark.parametrize("piece_s", [0.5, 7.3, 299.9, 301.0, 1000.0])
def test_vad_over_audio_in_pieces_finds_what_it_finds_on_the_whole(piece_s):
    truth = [(5.0, 9.0), (298.0, 303.0), (450.0, 451.0), (599.5, 604.0), (895.0, 900.0)]
    samples = (np.arange(900 * 16000) // 16000).astype(np.int16)

    def detect(block: np.ndarray):
        offset = round(float(block[0]) * 32768)
        end = offset + len(block) / 16000
        return [
            (max(a, offset) - offset, min(b, end) - offset)
            for a, b in truth
            if b > offset and a < end
        ]

    whole = longform.speech_ranges(samples, detect, block_s=300.0)
    tracker = longform.SpeechTracker(detect, block_s=300.0)
    step, found, held = int(piece_s * 16000), [], 0
    for k in range(0, len(samples), step):
        found += tracker.push(samples[k : k + step])
        held = max(held, tracker._held)
        assert tracker.processed <= tracker.received
    found += tracker.finish()
    assert found == whole == truth
    assert tracker.processed == 900.0
    assert held <= (300.0 + piece_s) * 16000 + 16000  # one block and one piece, never the file


@pytest.mark.parametrize(
    ("duration", "device", "free", "expected"),
    [
        (45, "cpu", None, 2),
        (600, "cpu", None, 8),
        (3600, "cpu", None, 8),
        (3600, "cuda", 40 << 30, 16),
        (3600, "cuda", 1 << 30, 1),
    ],
)
def test_batch_size_from_duration_and_free_memory(duration, device, free, expected):
    assert longform.batch_size_for(duration, device, free, cap=16) == expected


def test_int16_to_float_holds_one_float_copy():
    import tracemalloc

    samples = np.arange(2_000_000, dtype=np.int64).astype(np.int16)
    tracemalloc.start()
    try:
        audio = longform.to_float(samples)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(audio, samples.astype(np.float32) / 32768.0)
    assert peak < 1.5 * audio.nbytes, "the conversion made a second float copy"
