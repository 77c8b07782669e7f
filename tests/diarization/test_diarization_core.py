"""Pure-core tests: clustering and count logic, turn building, the Diarizer loop (no models)."""

from __future__ import annotations

import numpy as np
import pytest
from pyannote.core import Annotation, Segment

from asr_mesh.services.common.domain import ProgressUpdate, SpeakerTurn, TimeRange
from asr_mesh.services.common.errors import InvalidInput
from asr_mesh.services.diarization.clustering import (
    ClusteringOptions,
    cluster_embeddings,
    fill_gaps,
    smooth_runs,
)
from asr_mesh.services.diarization.core import (
    DiarizationOptions,
    DiarizationOutcome,
    Diarizer,
    exclusive_turns,
    speaker_bounds,
)
from asr_mesh.services.diarization.embedding import WINDOW_FRAMES, window_starts


def voices(counts, spread=0.25, dim=64, seed=0):
    """Synthetic embeddings: `counts[i]` noisy samples around speaker i's random direction."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(counts), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x, truth = [], []
    for index, count in enumerate(counts):
        x.append(centres[index] + spread * rng.standard_normal((count, dim)) / np.sqrt(dim))
        truth += [index] * count
    return np.concatenate(x), np.array(truth)


def same_partition(a, b) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("counts", [[30], [20, 25], [15, 30, 12], [10, 10, 10, 10]])
def test_count_is_estimated(counts):
    x, truth = voices(counts)
    labels = cluster_embeddings(x, 1, 10)
    assert labels.max() + 1 == len(counts)
    assert same_partition(labels, truth)
    assert labels[0] == 0, "labels follow first appearance"


def test_interleaved_speakers_keep_their_labels():
    x, truth = voices([20, 20], seed=3)
    order = np.random.default_rng(1).permutation(len(x))
    labels = cluster_embeddings(x[order], 1, 10)
    assert same_partition(labels, truth[order])


def test_exact_count_and_bounds_are_honoured():
    x, _ = voices([20, 25, 15])
    assert cluster_embeddings(x, 2, 2).max() + 1 == 2
    assert cluster_embeddings(x, 5, 5).max() + 1 == 5
    assert cluster_embeddings(x, 1, 2).max() + 1 == 2
    assert cluster_embeddings(x, 4, 6).max() + 1 >= 4
    one, _ = voices([40])
    assert cluster_embeddings(one, 2, 10).max() + 1 == 2


def test_a_lone_outlier_window_is_not_a_speaker():
    x, _ = voices([20, 20])
    outlier = np.random.default_rng(9).standard_normal((1, x.shape[1]))
    labels = cluster_embeddings(np.concatenate([x, outlier]), 1, 10)
    assert labels.max() + 1 == 2


def test_clustering_is_deterministic_and_handles_tiny_inputs():
    x, _ = voices([15, 15, 15], seed=5)
    assert np.array_equal(cluster_embeddings(x, 1, 10), cluster_embeddings(x.copy(), 1, 10))
    assert cluster_embeddings(np.zeros((0, 8)), 1, 10).shape == (0,)
    assert cluster_embeddings(x[:1], 1, 10).tolist() == [0]


def test_long_inputs_are_subsampled_with_the_same_answer():
    x, truth = voices([300, 200, 250], seed=2)
    labels = cluster_embeddings(x, 1, 10, ClusteringOptions(max_points=200, spectral_points=200))
    assert labels.max() + 1 == 3
    assert same_partition(labels, truth)


def test_short_flickers_are_absorbed_but_isolated_turns_stay():
    runs = [(0, 0.0, 2.0), (1, 2.0, 2.2), (0, 2.2, 4.0), (1, 5.0, 5.3), (1, 6.0, 9.0)]
    assert smooth_runs(runs, 0.5) == [(0, 0.0, 4.0), (1, 5.0, 5.3), (1, 6.0, 9.0)]


def test_gaps_close_within_a_speaker_and_turns_widen_into_silence():
    runs = [(0, 1.0, 2.0), (0, 2.5, 3.0), (1, 3.4, 5.0), (0, 8.0, 9.0)]
    out = fill_gaps(runs, max_gap=1.0, extend=0.45, duration=9.2)
    assert out == [(0, 0.55, 3.2), (1, 3.2, 5.45), (0, 7.55, 9.2)]


def test_window_starts_cover_the_region():
    assert window_starts(100, 40) == [0]
    starts = window_starts(500, 40)
    assert starts[0] == 0 and starts[-1] + WINDOW_FRAMES == 500
    assert all(b - a <= 40 for a, b in zip(starts, starts[1:]))


def test_exclusive_turns_from_an_overlapping_annotation():
    annotation = Annotation()
    annotation[Segment(5.0, 9.0)] = "b"
    annotation[Segment(0.0, 6.0)] = "a"
    annotation[Segment(7.0, 7.5)] = "c"
    annotation[Segment(10.0, 12.0)] = "a"
    turns, overlaps, count = exclusive_turns(annotation)
    assert count == 3
    # "a" holds the floor through the overlap; "c" interjects inside "b"'s turn.
    assert turns == [
        SpeakerTurn("SPEAKER_00", 0.0, 6.0),
        SpeakerTurn("SPEAKER_01", 6.0, 9.0),
        SpeakerTurn("SPEAKER_00", 10.0, 12.0),
    ]
    assert overlaps == [TimeRange(5.0, 6.0), TimeRange(7.0, 7.5)]
    assert exclusive_turns(Annotation()) == ([], [], 0)


def test_secondary_tracks_count_as_overlap_but_never_change_turns_or_names():
    def turns_of(with_secondary: bool):
        annotation = Annotation()
        annotation[Segment(0.0, 8.0), "turn0"] = "a"
        annotation[Segment(8.0, 16.0), "turn1"] = "b"
        annotation[Segment(16.0, 20.0), "turn2"] = "c"
        if with_secondary:
            annotation[Segment(2.0, 3.0), "overlap0"] = (
                "c"  # "c" speaks under "a" before its own turn
            )
            annotation[Segment(8.0, 8.4), "overlap1"] = "a"  # a window straddling the change to "b"
        return exclusive_turns(annotation)

    plain, _, count = turns_of(False)
    turns, overlaps, count_with = turns_of(True)
    assert (
        turns
        == plain
        == [
            SpeakerTurn("SPEAKER_00", 0.0, 8.0),
            SpeakerTurn("SPEAKER_01", 8.0, 16.0),
            SpeakerTurn("SPEAKER_02", 16.0, 20.0),
        ]
    )
    assert overlaps == [TimeRange(2.0, 3.0), TimeRange(8.0, 8.4)] and count_with == count == 3


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (DiarizationOptions(), (1, 10)),
        (DiarizationOptions(num_speakers=3), (3, 3)),
        (DiarizationOptions(min_speakers=2), (2, 10)),
        (DiarizationOptions(max_speakers=4), (1, 4)),
        (DiarizationOptions(num_speakers=2, min_speakers=1, max_speakers=5), (2, 2)),
    ],
)
def test_speaker_bounds(options, expected):
    assert speaker_bounds(options, 10) == expected


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (DiarizationOptions(num_speakers=-1), "negative"),
        (DiarizationOptions(max_speakers=11), "limit"),
        (DiarizationOptions(min_speakers=4, max_speakers=2), "greater than"),
        (DiarizationOptions(num_speakers=5, max_speakers=3), "contradicts"),
    ],
)
def test_impossible_speaker_options_are_refused(options, words):
    with pytest.raises(InvalidInput, match=words):
        speaker_bounds(options, 10)


class FakeBackend:
    name = "fake"

    def __init__(self, fail: Exception | None = None):
        self.calls = []
        self.fail = fail

    def annotate(self, audio, min_speakers, max_speakers, progress):
        self.calls.append((len(audio), min_speakers, max_speakers))
        progress(0.5, "half way")
        if self.fail:
            raise self.fail
        annotation = Annotation()
        annotation[Segment(0.5, 1.5)] = "x"
        annotation[Segment(1.5, 2.0)] = "y"
        return annotation


def test_diarizer_streams_progress_then_one_outcome():
    backend = FakeBackend()
    events = list(
        Diarizer(backend).diarize(np.zeros(32_000, np.float32), DiarizationOptions(max_speakers=3))
    )
    assert backend.calls == [(32_000, 1, 3)]
    assert all(isinstance(e, ProgressUpdate) for e in events[:-1])
    assert [e.fraction for e in events[:-1]] == sorted(e.fraction for e in events[:-1])
    assert any(e.message == "half way" for e in events[:-1])
    outcome = events[-1]
    assert isinstance(outcome, DiarizationOutcome)
    assert outcome.backend == "fake" and outcome.speaker_count == 2
    assert outcome.audio_duration == pytest.approx(2.0)
    assert [t.speaker for t in outcome.exclusive_turns] == ["SPEAKER_00", "SPEAKER_01"]


def test_diarizer_skips_the_backend_on_empty_audio_and_reraises_its_errors():
    backend = FakeBackend()
    *_, outcome = Diarizer(backend).diarize(np.zeros(0, np.float32), DiarizationOptions())
    assert outcome.exclusive_turns == () and outcome.speaker_count == 0 and backend.calls == []
    failing = Diarizer(FakeBackend(fail=InvalidInput("audio is unusable")))
    with pytest.raises(InvalidInput, match="unusable"):
        list(failing.diarize(np.zeros(16_000, np.float32), DiarizationOptions()))


class Endless:
    """Backend stand-in that works in small batches until it is told to stop."""

    name = "endless"

    def __init__(self):
        import threading

        self.batches = 0
        self.stopped = threading.Event()

    def annotate(self, audio, min_speakers, max_speakers, progress):
        import time

        try:
            while True:
                self.batches += 1
                progress(min(0.9, self.batches / 1000), "batch")
                time.sleep(0.002)
        finally:
            self.stopped.set()


def test_closing_the_stream_stops_the_worker_soon():
    backend = Endless()
    events = Diarizer(backend).diarize(np.zeros(16_000, np.float32), DiarizationOptions())
    for _ in range(3):
        next(events)
    events.close()  # what gRPC does when the caller cancels
    assert backend.stopped.wait(2.0), "the worker kept going after the caller left"


def test_a_cancel_event_stops_the_work_with_cancelled():
    import threading

    from asr_mesh.services.common.errors import Cancelled

    backend, cancel = Endless(), threading.Event()
    events = Diarizer(backend).diarize(np.zeros(16_000, np.float32), DiarizationOptions(), cancel)
    next(events)
    threading.Timer(0.05, cancel.set).start()
    with pytest.raises(Cancelled):
        list(events)
    assert backend.stopped.wait(2.0)


def test_a_span_with_progress_events_and_work_reported_to_the_callback(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from asr_mesh.services.diarization import core

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(core, "tracer", provider.get_tracer("test"))
    work: list[tuple[float, float]] = []
    diarizer = Diarizer(
        FakeBackend(), on_work=lambda audio_s, processing_s: work.append((audio_s, processing_s))
    )
    *_, outcome = diarizer.diarize(np.zeros(32_000, np.float32), DiarizationOptions())
    (span,) = exporter.get_finished_spans()
    assert span.name == "diarization.diarize"
    assert span.attributes["asr.audio.duration_s"] == pytest.approx(2.0)
    assert span.attributes["asr.diarization.backend"] == "fake"
    assert span.attributes["asr.rtf"] > 0
    assert [e.attributes["message"] for e in span.events] == ["half way"]
    assert work == [(pytest.approx(2.0), outcome.processing_seconds)]


def test_embedding_context_smooths_within_a_region_only():
    from asr_mesh.services.diarization.clustering import smooth_embeddings

    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    out = smooth_embeddings(x, np.array([0, 0, 0, 0, 1]), radius=1)
    assert np.allclose(out[0], [1, 0]) and np.allclose(out[4], [1, 0]), "regions stay apart"
    assert 0 < out[2][0] < out[2][1], "a window leans towards its own voice"
    assert np.allclose(smooth_embeddings(x, np.zeros(5), radius=0), x)


def test_refinement_moves_a_boundary_window_to_the_nearer_centroid():
    from asr_mesh.services.diarization.clustering import refine

    x = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99], [0.8, 0.6]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert refine(x, np.array([0, 0, 1, 1, 1]), 3, keep_at_least=2).tolist() == [0, 0, 1, 1, 0]
    # never fewer speakers than asked for
    assert refine(x, np.array([0, 0, 0, 0, 1]), 3, keep_at_least=2).max() == 1


def test_centering_restores_angles_that_a_shared_component_closed():
    from asr_mesh.services.diarization.clustering import center, normalize

    x, truth = voices([20, 20], seed=4)
    shared = np.random.default_rng(8).standard_normal(x.shape[1])
    noisy = normalize(normalize(x) + 2.5 * shared / np.linalg.norm(shared))  # "noise" in common

    def cross(e):
        a, b = normalize(e[truth == 0]).mean(0), normalize(e[truth == 1]).mean(0)
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    assert cross(noisy) > 0.8
    assert cross(center(noisy, 0.9)) < cross(noisy) - 0.3
    assert np.allclose(center(noisy, 0.0), noisy)


def test_snr_estimate_from_speech_regions():
    from asr_mesh.services.diarization.embedding import estimate_snr_db

    rng = np.random.default_rng(0)
    audio = (0.001 * rng.standard_normal(48_000)).astype(np.float32)
    audio[16_000:32_000] += (0.1 * rng.standard_normal(16_000)).astype(np.float32)
    assert estimate_snr_db(audio, [(1.0, 2.0)]) == pytest.approx(40.0, abs=1.0)
    assert estimate_snr_db(audio, []) == 99.0
    assert estimate_snr_db(audio, [(0.0, 3.0)]) == 99.0, "no pause, no background to measure"
