"""Lockstep decoding: chunk planning, prompt alignment, batching of threads' model calls (pure),
and, with the real model, that each chunk gets what plain faster-whisper gives it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asr_mesh.services.transcription import lockstep
from asr_mesh.services.transcription.lockstep import LockstepBatcher, plan_chunks


def speech_every(n: int, length: float = 5.0, pause: float = 0.5, long_pause_every: int = 0):
    out, t = [], 0.3
    for i in range(n):
        out.append((t, t + length))
        t += length + (3.0 if long_pause_every and (i + 1) % long_pause_every == 0 else pause)
    return out


def test_chunks_cover_the_audio_cut_in_pauses_with_about_equal_speech():
    speech = speech_every(96, long_pause_every=7)  # 480 s of speech, 3 s pauses every 7 ranges
    chunks = plan_chunks(speech, 8)
    assert len(chunks) == 8
    assert chunks[0][0] == 0.0 and chunks[-1][1] == speech[-1][1]
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for cut in [b for _, b in chunks[:-1]]:
        assert not any(a < cut < b for a, b in speech), "a cut never falls inside speech"
    shares = [sum(min(b, e) - max(a, s) for a, b in speech if b > s and a < e) for s, e in chunks]
    assert max(shares) < 1.3 * (480 / 8) and min(shares) > 0.7 * (480 / 8)


def test_cuts_prefer_the_longest_pause_near_the_share():
    speech = speech_every(24, long_pause_every=6)  # 120 s: 2 chunks; long pauses after 6, 12, 18
    (first, _), (second, _) = plan_chunks(speech, 2)
    cut = second
    long_pause_after = speech[11][1]
    assert long_pause_after < cut < speech[12][0]


def test_short_audio_is_one_chunk_and_no_speech_is_none():
    assert plan_chunks(speech_every(10), 8) == [(0.0, speech_every(10)[-1][1])]  # 50 s < 60 s
    assert plan_chunks([], 8) == []
    assert len(plan_chunks(speech_every(30), 8)) == 2  # 150 s of speech: at most 2 of 60 s


def test_prompts_are_aligned_on_the_start_token_keeping_recent_context():
    sot, prev = 100, 99
    prompts = [[prev, 1, 2, 3, 4, sot, 7], [prev, 5, 6, sot, 7], [prev, 8, 9, 10, sot, 7]]
    aligned = lockstep._align_prompts(prompts, sot)
    assert [p.index(sot) for p in aligned] == [3, 3, 3]
    assert aligned == [[prev, 3, 4, sot, 7], [prev, 5, 6, sot, 7], [prev, 9, 10, sot, 7]]
    same = [[sot, 7], [sot, 7]]
    assert lockstep._align_prompts(same, sot) is same


class FakeWhisper:
    """A CTranslate2-like model: encode returns the features, generate echoes the first value."""

    def __init__(self):
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def encode(self, features, to_cpu=False):
        return np.asarray(features)[:, :2, :2]

    def generate(self, encoder_output, prompts, **kwargs):
        batch = np.asarray(encoder_output)
        with self.lock:
            self.batches.append(len(prompts))
        return [(float(item[0, 0]), kwargs.get("beam_size")) for item in batch]


def run_threads(batcher: LockstepBatcher, plans: list[list[tuple[float, int]]]):
    """Each thread makes its calls in order; returns what each call got back."""
    got = [[] for _ in plans]

    def worker(i):
        try:
            for value, beam in plans[i]:
                encoding = lockstep._Encoding(np.full((80, 3000), value, dtype=np.float32))
                got[i].append(batcher.generate(encoding, [0], {"beam_size": beam}))
        finally:
            batcher.leave()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a thread was left waiting"
    return got


def test_calls_of_all_threads_run_as_one_batch_and_results_go_back_to_their_caller():
    model = FakeWhisper()
    plans = [[(float(10 * i + k), 5) for k in range(3 + i)] for i in range(4)]  # uneven lengths
    got = run_threads(LockstepBatcher(model, 4), plans)
    assert got == [[(v, 5) for v, _ in plan] for plan in plans]
    assert model.batches == [4, 4, 4, 3, 2, 1]  # threads that finished no longer hold the rest


def test_calls_with_different_decoding_arguments_are_batched_apart():
    model = FakeWhisper()
    got = run_threads(LockstepBatcher(model, 3), [[(1.0, 5)], [(2.0, 1)], [(3.0, 5)]])
    assert got == [[(1.0, 5)], [(2.0, 1)], [(3.0, 5)]]
    assert sorted(model.batches) == [1, 2]


def test_cancel_releases_every_waiting_thread():
    model = FakeWhisper()
    batcher = LockstepBatcher(model, 3)  # one stream never calls: the others wait for it
    errors = []

    def worker():
        try:
            batcher.generate(lockstep._Encoding(np.zeros((80, 3000), np.float32)), [0], {})
        except lockstep.LockstepCancelled as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    threading.Event().wait(0.2)
    assert not errors and model.batches == []
    batcher.cancel()
    for t in threads:
        t.join(5)
    assert len(errors) == 2 and model.batches == []


def test_a_model_error_reaches_every_thread_of_the_batch():
    class Broken(FakeWhisper):
        def generate(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    batcher = LockstepBatcher(Broken(), 2)
    raised = []

    def worker():
        try:
            batcher.generate(lockstep._Encoding(np.zeros((80, 3000), np.float32)), [0], {})
        except RuntimeError as error:
            raised.append(str(error))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert raised == ["out of memory", "out of memory"]


@pytest.mark.models
def test_each_chunk_gets_what_plain_faster_whisper_gives_it(corpus):
    """Four single-window chunks (no context to align): batched output == per-chunk plain, words
    and their timestamps (alignment runs batched too)."""
    from conftest import MODELS_DIR
    from faster_whisper import WhisperModel, decode_audio

    whisper_model = WhisperModel(
        str(MODELS_DIR / "whisper-base"), device="cpu", compute_type="int8", cpu_threads=2
    )
    corpus_dir = corpus
    chunks = [decode_audio(str(corpus_dir / "asr" / f"{i:03d}.flac")) for i in (0, 3, 6, 9)]
    kwargs = dict(
        language="pt", beam_size=5, word_timestamps=True, vad_filter=True, temperature=[0.0]
    )

    def timed(segment):
        return segment.text, [(w.word, round(w.start, 2), round(w.end, 2)) for w in segment.words]

    plain = [[timed(s) for s in whisper_model.transcribe(c, **kwargs)[0]] for c in chunks]
    sizes: list[int] = []
    together: list[list] = [[] for _ in chunks]
    order = []
    for index, segment in lockstep.transcribe_chunks(whisper_model, chunks, kwargs, sizes.append):
        together[index].append(timed(segment))
        order.append(index)
    assert together == plain
    assert order == sorted(order), "chunks come out in time order"
    assert max(sizes) == 4, "the four chunks' decodes ran as one batch"
