"""Pure tests for the hallucination guards: loops, silence rules, signal energy."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.domain import Segment, Word
from services.transcription import guards


def words(text: str, start: float = 0.0, step: float = 0.4, squeeze: bool = False) -> list[Word]:
    out, t = [], start
    for token in text.split():
        length = 0.0 if squeeze else step
        out.append(Word(t, t + length, token, 0.9))
        t += length if squeeze else step
    return out


def seg(index: int, ws: list[Word]) -> Segment:
    return Segment(index, ws[0].start, ws[-1].end, " ".join(w.word for w in ws), tuple(ws))


def test_a_hallucinated_loop_is_cut_to_three_copies():
    loop = words("bom dia " + "obrigado pela atenção " * 7, squeeze=True)
    out, removed = guards.cut_loops([seg(0, loop)])
    assert removed == 12  # four copies of three words
    assert out[0].text == "bom dia " + " ".join(["obrigado pela atenção"] * 3)


def test_a_loop_spread_over_segments_is_cut():
    segments = [seg(k, words("obrigado.", start=10.0, squeeze=True)) for k in range(6)]
    out, removed = guards.cut_loops(segments)
    assert [s.text for s in out] == ["obrigado."] * 3
    assert removed == 3


def test_repetition_the_audio_holds_is_kept():
    # Five copies, each with its own second of audio: someone really said it five times.
    spoken = words("não " * 5, step=1.0)
    out, removed = guards.cut_loops([seg(0, spoken)])
    assert removed == 0 and out[0].text == " ".join(["não"] * 5)


def test_three_copies_are_allowed_and_text_without_words_is_checked_too():
    three = Segment(0, 0, 1, "sim sim sim, tudo bem")
    assert guards.cut_loops([three])[0] == [three]
    looped = Segment(0, 0, 1, "é isso " * 6)
    out, removed = guards.cut_loops([looped])
    assert out[0].text == "é isso é isso é isso" and removed == 6


def test_loop_filter_streams_in_time_order():
    loop_filter = guards.LoopFilter(hold=2)
    released = []
    for k in range(8):
        released += loop_filter.push(seg(k, words("de novo", start=float(k), squeeze=True)))
    released += loop_filter.flush()
    assert [s.id for s in released] == [0, 1, 2]


def test_silence_rules_follow_faster_whisper():
    silent = Segment(0, 0, 1, "Legendas pela comunidade", no_speech_prob=0.9, avg_logprob=-1.5)
    speech = Segment(0, 0, 1, "bom dia", no_speech_prob=0.9, avg_logprob=-0.3)
    assert guards.is_silent(silent) and not guards.is_silent(speech)
    assert not guards.is_confident(speech)  # after a no-VAD decode, doubt means drop
    assert guards.is_failed_window(-0.2, 3.1, 0.1)
    assert guards.is_failed_window(-1.3, 1.5, 0.1)
    assert not guards.is_failed_window(-1.3, 1.5, 0.9)  # silent, not failed
    assert not guards.is_failed_window(-0.2, 1.5, 0.1)


@pytest.mark.parametrize(("level", "expected"), [(0.0, False), (0.001, False), (0.05, True)])
def test_energy_floor(level, expected):
    rng = np.random.default_rng(0)
    noise = (level * rng.standard_normal(16000)).astype(np.float32)
    assert guards.has_energy(noise) is expected
    assert guards.has_energy((noise * 32768).astype(np.int16)) is expected
