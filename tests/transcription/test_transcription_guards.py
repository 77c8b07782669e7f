"""Pure tests for the hallucination guards: loops, silence rules, signal energy."""

from __future__ import annotations

import numpy as np
import pytest

from asr_mesh.services.common.domain import Segment, Word
from asr_mesh.services.transcription import guards


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


# -- inventions at the end of the audio and in pauses ------------------------------------------


def squeezed_tail() -> Segment:
    """The invented last segment of a 30 s conversation, as Whisper gave it."""
    texts = "Bom dia, estou verificando aqui no sistema.".split()
    probs = [0.0, 0.24, 0.01, 0.05, 0.0, 0.02, 0.1]
    ws = tuple(
        Word(30.10 + 0.0114 * k, 30.10 + 0.0114 * (k + 1), t, p)
        for k, (t, p) in enumerate(zip(texts, probs))
    )
    return Segment(9, 30.10, 30.18, " ".join(texts), ws)


def test_improbable_words_squeezed_into_milliseconds_are_invented():
    assert guards.is_squeezed(squeezed_tail())


def test_a_confident_sentence_piled_at_one_instant_is_untimed():
    said = words("avenida principal obrigado pela atenção e tenha um ótimo dia", step=0.5)
    again = [Word(5.96, 5.96, w.word, 0.99) for w in said[2:]]  # as Whisper gave it
    assert guards.untimed_runs(said + again) == [(len(said), len(said) + len(again))]


def test_quick_speech_and_a_word_or_two_cut_short_are_not_untimed():
    quick = words("um dois três quatro cinco seis sete oito", step=0.12)  # 8 words a second
    cut = [*words("bom dia", step=0.3), Word(0.6, 0.6, "a", 0.5), Word(0.6, 0.6, "se", 0.4)]
    assert guards.untimed_runs(quick) == []
    assert guards.untimed_runs(cut) == []  # two: a word cut off by the buffer's end


def test_real_speech_is_not_squeezed_even_when_fast_or_improbable():
    fast = Segment(0, 0, 1.2, "", tuple(words("um dois três quatro cinco seis", step=0.2)))
    doubtful = Segment(
        1,
        0,
        2.4,
        "",
        tuple(Word(w.start, w.end, w.word, 0.1) for w in words("fala muito baixa aqui", step=0.6)),
    )
    assert not guards.is_squeezed(fast)  # 5 words/s: quick, but said
    assert not guards.is_squeezed(doubtful)  # improbable, but it takes real time
    assert not guards.is_squeezed(Segment(2, 0, 1, "sem palavras"))


def test_text_after_the_last_speech_or_inside_a_pause_is_outside_speech():
    speech = [(0.5, 10.0), (14.0, 29.0)]
    after = Segment(0, 30.1, 31.0, "", tuple(words("obrigado", start=30.1)))
    in_pause = Segment(1, 11.0, 12.5, "", tuple(words("tchau tchau", start=11.0)))
    edge = Segment(2, 10.3, 11.0, "", tuple(words("final", start=10.3)))  # within the margin
    inside = Segment(3, 15.0, 16.0, "", tuple(words("dentro", start=15.0)))
    assert guards.outside_speech(after, speech) and guards.outside_speech(in_pause, speech)
    assert not guards.outside_speech(edge, speech) and not guards.outside_speech(inside, speech)
    assert not guards.outside_speech(after, [])  # VAD heard nothing: not judged here


def test_the_core_drops_inventions_and_counts_them(tmp_path):
    from test_transcription_core import (
        FakeModel,
        FakeSegment,
        collect,
        fake_transcriber,
    )

    class InventsAtTheEnd(FakeModel):
        def transcribe(self, audio, **kw):
            from types import SimpleNamespace

            real = FakeSegment(1.0, 4.0, "bom dia a todos")
            tail = FakeSegment(9.5, 9.55, "estou verificando aqui no sistema")
            for w in tail.words:
                w.probability = 0.05
            pause = FakeSegment(6.0, 7.0, "obrigado")
            return iter([real, pause, tail]), SimpleNamespace(
                language="pt", language_probability=1.0
            )

    transcriber = fake_transcriber(
        tmp_path, InventsAtTheEnd(), detect_speech=lambda block: [(0.9, 4.2)]
    )
    audio = np.zeros(16000 * 10, dtype=np.int16)
    segments, summary, _ = collect(transcriber, audio)
    assert [s.text for s in segments] == ["bom dia a todos"]
    assert summary.invented_removed == 2


# -- quiet speech -----------------------------------------------------------------------------


def tone_bursts(level_dbfs: float, seconds: float = 6.0) -> np.ndarray:
    """Half a second of tone every second at `level_dbfs` RMS, silence between: speech-like."""
    t = np.arange(int(16000 * seconds)) / 16000
    on = (t % 1.0) < 0.5
    amplitude = 10 ** (level_dbfs / 20) * np.sqrt(2)
    return (amplitude * np.sin(2 * np.pi * 220 * t) * on).astype(np.float32)


def test_quiet_speech_gets_one_static_gain_to_a_normal_level():
    quiet = tone_bursts(-45.0)
    assert guards.speech_level_dbfs(quiet) == pytest.approx(-45.0, abs=0.5)  # pauses ignored
    gain = guards.quiet_gain(quiet)
    assert 20 * np.log10(gain) == pytest.approx(25.0, abs=0.5)
    louder = guards.apply_gain((quiet * 32768).astype(np.int16), gain)
    assert louder.dtype == np.int16
    assert guards.speech_level_dbfs(louder) == pytest.approx(-20.0, abs=0.6)


def test_normal_speech_and_silence_are_left_alone_and_peaks_never_clip():
    assert guards.quiet_gain(tone_bursts(-18.0)) == 1.0
    assert guards.quiet_gain(np.zeros(16000, np.float32)) == 1.0
    spiky = tone_bursts(-45.0)
    spiky[100] = 0.5  # one loud click: the gain stops where the click would reach 0.95
    assert 20 * np.log10(guards.quiet_gain(spiky)) == pytest.approx(
        20 * np.log10(0.95 / 0.5), abs=0.01
    )


def test_the_core_keeps_the_gain_only_where_vad_hears_speech(tmp_path):
    from test_transcription_core import FakeModel, collect, fake_transcriber

    heard = []

    def vad_hears_only_loud_audio(block):
        heard.append(guards.speech_level_dbfs(block))
        return [(0.0, len(block) / 16000)] if guards.speech_level_dbfs(block) > -30 else []

    model = FakeModel(always=True)
    transcriber = fake_transcriber(tmp_path, model, detect_speech=vad_hears_only_loud_audio)
    collect(transcriber, (tone_bursts(-45.0) * 32768).astype(np.int16))
    assert heard[0] == pytest.approx(-20.0, abs=0.6)  # VAD ran on the louder audio and kept it
    assert guards.rms_dbfs(np.asarray(model.calls[0]["audio"])) > -30

    off = FakeModel(always=True)
    noise = (np.random.default_rng(0).normal(0, 0.005, 16000 * 5) * 32768).astype(np.int16)
    never = fake_transcriber(tmp_path, off, detect_speech=lambda block: [])
    collect(never, noise)
    assert guards.rms_dbfs(np.asarray(off.calls[0]["audio"])) < -40  # nothing heard: no gain
