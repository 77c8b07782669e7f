"""benchmarks/tune_speakers.py: window truth from a reference, and the intervals it prints."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pyannote.core import Annotation, Segment

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

import tune_speakers  # noqa: E402


def test_window_truth_is_the_speaker_overlapping_most():
    ref = Annotation()
    ref[Segment(0.0, 2.0)] = "b"
    ref[Segment(2.0, 5.0)] = "a"
    starts, ends = [0.0, 1.0, 1.8, 6.0], [1.6, 2.6, 3.4, 7.6]
    # labels in sorted order: a → 0, b → 1; the last window touches no speech
    assert tune_speakers.window_truth(starts, ends, ref).tolist() == [1, 1, 0, -1]


def test_window_truth_of_an_empty_reference():
    assert tune_speakers.window_truth([0.0], [1.6], Annotation()).tolist() == [-1]


def test_pooled_interval_brackets_the_pooled_rate():
    errors, totals = [1.0, 2.0, 10.0, 0.0], [10.0, 20.0, 20.0, 10.0]
    rate, low, high = tune_speakers.pooled_interval(errors, totals, rounds=500)
    assert rate == 13.0 / 60.0
    assert 0.0 <= low < rate < high <= 0.5
    same = tune_speakers.pooled_interval([2.0] * 5, [10.0] * 5, rounds=100)
    assert np.allclose(same, (0.2, 0.2, 0.2))


def test_wilson_interval():
    low, high = tune_speakers.wilson(6, 11)
    assert 0.27 < low < 0.29 and 0.78 < high < 0.80
    assert abs(tune_speakers.wilson(10, 10)[1] - 1.0) < 1e-9
