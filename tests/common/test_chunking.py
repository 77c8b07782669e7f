"""The chunk planner shared by lockstep (one replica) and the gateway's fan-out (many)."""

from __future__ import annotations

import random

import pytest

from asr_mesh.services.common.chunking import CLEAR_PAUSE_S, ChunkPlanner, plan_chunks


def random_speech(seed: int, seconds: float = 1800.0) -> list[tuple[float, float]]:
    """Speech ranges of 0.3-12 s separated by pauses of 0.05-3 s, like VAD output."""
    rng = random.Random(seed)
    out, t = [], rng.uniform(0.0, 2.0)
    while t < seconds:
        length = rng.uniform(0.3, 12.0)
        out.append((round(t, 3), round(t + length, 3)))
        t += length + rng.choice([rng.uniform(0.05, 0.4), rng.uniform(0.4, 3.0)])
    return out


def plan_streamed(speech, share, pieces, duration):
    planner = ChunkPlanner(share)
    chunks = []
    for k in range(0, len(speech), pieces):
        chunks += planner.feed(speech[k : k + pieces])
    return chunks + planner.finish(duration)


@pytest.mark.parametrize("seed", range(8))
def test_cuts_do_not_depend_on_how_the_speech_arrives(seed):
    speech = random_speech(seed)
    duration = speech[-1][1] + 1.0
    whole = plan_streamed(speech, 120.0, len(speech), duration)
    for pieces in (1, 3, 17):
        assert plan_streamed(speech, 120.0, pieces, duration) == whole


@pytest.mark.parametrize("seed", range(8))
def test_chunks_cover_the_timeline_and_cut_only_in_pauses(seed):
    speech = random_speech(seed)
    duration = speech[-1][1] + 2.5
    chunks = plan_streamed(speech, 120.0, 5, duration)
    assert chunks[0][0] == 0.0 and chunks[-1][1] == duration
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for _, cut in chunks[:-1]:
        assert not any(a < cut < b for a, b in speech), f"cut {cut} falls inside speech"
    total = sum(b - a for a, b in speech)
    assert abs(len(chunks) - total / 120.0) <= 1.5  # about one chunk per share of speech


def test_a_clear_pause_near_the_goal_wins_over_a_tiny_one_on_it():
    # 4 s ranges, every pause 0.2 s except one of 2 s after 92 s of speech: 8 s before the
    # goal of 100 s, within the tolerance of an eighth.
    speech, t = [], 0.0
    for k in range(30):
        speech.append((t, t + 4.0))
        t += 4.0 + (2.0 if k == 22 else 0.2)  # speech before that pause: 23 * 4 = 92 s
    chunks = plan_streamed(speech, 100.0, 1, t)
    assert chunks[0][1] == pytest.approx(speech[22][1] + 1.0)  # the middle of the 2 s pause
    assert min(speech[23][0] - speech[22][1], CLEAR_PAUSE_S) == CLEAR_PAUSE_S


def test_short_audio_is_one_chunk_and_no_speech_gives_the_whole_timeline():
    assert plan_streamed([(0.5, 30.0)], 120.0, 1, 31.0) == [(0.0, 31.0)]
    assert plan_streamed([], 120.0, 1, 12.0) == [(0.0, 12.0)]
    assert ChunkPlanner(120.0).finish(0.0) == []
    with pytest.raises(ValueError):
        ChunkPlanner(0.0)
    with pytest.raises(ValueError):
        ChunkPlanner(60.0).feed([(5.0, 6.0), (4.0, 7.0)])


def test_balanced_plan_uses_the_same_rule():
    speech = random_speech(3, 600.0)
    chunks = plan_chunks(speech, 4)
    assert len(chunks) == 4 and chunks[0][0] == 0.0 and chunks[-1][1] == speech[-1][1]
    for _, cut in chunks[:-1]:
        assert not any(a < cut < b for a, b in speech)
