"""Window labels → speaker turns (`asr_mesh.services.diarization.embedding.turns_from_labels`),
pure.

The path every label source shares (the clustering, and the oracle rows of
benchmarks/tune_speakers.py): votes on the grid, short flickers absorbed, pauses closed.
"""

from __future__ import annotations

import numpy as np

from asr_mesh.services.diarization.embedding import (
    EmbeddingBackendOptions,
    Windows,
    turns_from_labels,
)


def windows_over(
    regions: list[tuple[float, float]], hop: float = 0.4, span: float = 1.6
) -> Windows:
    out = Windows()
    for index, (start, end) in enumerate(regions):
        t = start
        while True:
            out.region.append(index)
            out.start.append(t)
            out.end.append(min(end, t + span))
            out.embeddings.append(np.zeros(4))
            if t + span >= end:
                break
            t += hop
    return out


def test_one_label_per_region_gives_one_turn_per_region():
    regions = [(0.0, 4.0), (5.0, 9.0)]
    windows = windows_over(regions)
    labels = np.array([0 if r == 0 else 1 for r in windows.region])
    turns = turns_from_labels(
        regions, windows, labels, 10.0, EmbeddingBackendOptions(turn_extension=0.0)
    )
    assert turns == [(0, 0.0, 4.0), (1, 5.0, 9.0)]


def test_a_change_inside_a_region_splits_it_near_the_change():
    regions = [(0.0, 8.0)]
    windows = windows_over(regions)
    labels = np.array([0 if s + 0.8 < 4.0 else 1 for s in windows.start])
    turns = turns_from_labels(
        regions, windows, labels, 8.0, EmbeddingBackendOptions(turn_extension=0.0)
    )
    assert [t[0] for t in turns] == [0, 1]
    assert abs(turns[0][2] - 4.0) < 0.5 and turns[0][2] == turns[1][1]


def test_a_one_window_flicker_is_absorbed_and_pauses_are_closed():
    regions = [(0.0, 6.0), (6.5, 9.0)]
    windows = windows_over(regions)
    labels = np.zeros(len(windows.start), dtype=np.int64)
    labels[len(labels) // 4] = 1  # one stray window inside the first speaker's region
    turns = turns_from_labels(
        regions,
        windows,
        labels,
        9.0,
        EmbeddingBackendOptions(turn_extension=0.0, min_turn=0.6, max_gap_fill=1.0),
    )
    assert turns == [(0, 0.0, 9.0)]


def test_turns_widen_into_silence_but_not_past_the_file():
    regions = [(0.2, 3.0)]
    windows = windows_over(regions)
    turns = turns_from_labels(
        regions,
        windows,
        np.zeros(len(windows.start), dtype=np.int64),
        3.1,
        EmbeddingBackendOptions(turn_extension=0.45),
    )
    assert turns == [(0, 0.0, 3.1)]
