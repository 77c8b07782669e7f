"""The utterance-context diagnostic's pure parts: how it cuts utterances and squeezes pauses."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import utterance_context as uc  # noqa: E402


def test_utterances_join_across_short_pauses_and_split_at_long_ones_or_the_cap():
    ranges = [(0.0, 1.0), (1.3, 2.0), (3.0, 4.0), (4.2, 12.0), (12.1, 19.0)]
    assert uc.utterances(ranges) == [(0.0, 2.0), (3.0, 12.0), (12.1, 19.0)]


def test_squeezed_audio_holds_only_padded_speech_and_maps_times_back():
    audio = np.arange(10 * uc.SR, dtype=np.float32)  # sample value = its index
    ranges = [(1.0, 2.0), (5.0, 6.0), (8.0, 9.0)]
    clip, to_file, to_heard = uc.heard(audio, ranges, lo=0.5, end=9.5, squeeze=True, spad=0.1)
    assert clip.size == round(3 * 1.2 * uc.SR)  # three ranges, 0.1 s either side
    assert clip[0] == 0.9 * uc.SR  # starts at the first range's padding
    assert abs(to_file(0.1) - 1.0) < 1e-6  # the first range's start
    assert abs(to_file(1.2 + 0.1) - 5.0) < 1e-6  # the second range's start
    assert abs(to_heard(5.0) - 1.3) < 1e-6 and abs(to_heard(4.9) - 1.2) < 1e-6  # and back
    assert abs(to_heard(3.0) - 1.2) < 1e-6  # a removed pause maps to where it was cut
    plain, to_file, to_heard = uc.heard(audio, ranges, lo=0.5, end=9.5, squeeze=False, spad=0.1)
    assert plain.size == 9 * uc.SR and to_file(0.5) == 1.0 and to_heard(1.0) == 0.5


def test_acoustic_context_is_encoded_before_the_features_and_cut_from_the_output():
    """`acoustic=1`: the encoder hears the context first; the decoder gets the output from
    where the utterance's own features start (stride 2: one output frame per two mel frames)."""

    class Model:
        @staticmethod
        def encode(features):
            # One output frame per two mel frames: the mean of each pair, per mel band.
            pairs = features.reshape(*features.shape[:-1], -1, 2).mean(-1)
            return np.ascontiguousarray(np.swapaxes(pairs, -1, -2)[None])

    context = np.full((80, 6), -1.0, dtype=np.float32)
    features = np.arange(80 * 10, dtype=np.float32).reshape(80, 10)
    out = np.asarray(uc.acoustic_context(Model(), context).encode(features))
    assert out.shape == (1, 5, 80)
    assert np.allclose(out, Model.encode(features))  # the context's frames are cut off
    assert uc.acoustic_context(Model, context[:, :0]) is Model  # no context: the model itself


def test_an_utterance_decode_keeps_its_own_words_and_their_probabilities_for_the_choice():
    """`second=S` compares two decodes of one utterance by `streaming.confidence` of the words
    `decode_utterance` keeps: those whose middle lies in the utterance, not the context's."""
    from asr_mesh.services.common.domain import Segment, Word
    from asr_mesh.services.transcription import streaming as st

    audio = np.zeros(10 * uc.SR, dtype=np.float32)
    ranges = [(1.0, 3.0), (5.0, 7.0)]

    def decoder(clip, prompt, prefix):
        # Heard from 2.0 s (ctx 3 before the utterance at 5.0): a context word, two of its own.
        words = (
            Word(0.2, 0.6, "antes", 0.9),
            Word(3.1, 3.5, "sim", 0.8),
            Word(3.6, 4.0, "não", 0.4),
        )
        return [Segment(0, 0.2, 4.0, "antes sim não", words, compression_ratio=1.1)]

    decoder.model = None
    choice = uc.Choices.parse({"prompt": "0"})  # the context heard as is, no prompt
    found, seconds, timed = uc.decode_utterance(
        decoder, None, audio, ranges, [], (5.0, 7.0), 8.0, 3.0, 3.0, choice
    )
    assert [w for w, _, _ in found] == ["sim", "não"]
    assert abs(seconds - 5.3) < 1e-6  # 2.0 s to the utterance's end + 0.3 s
    assert st.confidence(timed) == st.confidence([Word(0, 0, "sim", 0.8), Word(0, 0, "não", 0.4)])


def test_the_second_decode_takes_its_own_prompt_choice_and_the_rest_from_the_first():
    kv = dict(x.split("=") for x in "ctx=8,prompt=0,second=4,sprompt=1,squeeze=1".split(","))
    first = uc.Choices.parse(kv)
    assert not first.use_prompt and first.second().use_prompt
    assert first.second().squeeze and first.second().spad == first.spad
    same = uc.Choices.parse({"ctx": "8", "prompt": "0"})
    assert same.second() == same  # without `sprompt` the second decode is chosen alike


def test_each_rule_chooses_between_two_decodes_by_its_own_score():
    from asr_mesh.services.common.domain import Word

    def decode(*probabilities):
        return [], 0.0, [Word(0.0, 0.1, "w", p) for p in probabilities]

    sure_but_one_doubt, even = decode(0.9, 0.9, 0.1), decode(0.4, 0.4, 0.4)
    pair = [sure_but_one_doubt, even]
    assert uc.choose("mean", pair) == 0  # mean log p: -0.84 against -0.92
    assert uc.choose("min", pair) == 1  # its worst word: 0.1 against 0.4
    assert uc.choose("first", [even, sure_but_one_doubt]) == 0
    assert uc.choose("sum", [decode(0.5), decode(0.5, 0.9)]) == 0  # fewer words
    assert uc.choose("sum+1n", [decode(0.5), decode(0.5, 0.9)]) == 1
    assert uc.choose("mean", [decode(), decode(0.1)]) == 1  # no words: never chosen


def test_the_mean_rule_is_the_session_s_confidence():
    from asr_mesh.services.common.domain import Word
    from asr_mesh.services.transcription import streaming as st

    rng = np.random.default_rng(3)
    for _ in range(20):
        pair = [
            ([], 0.0, [Word(0.0, 0.1, "w", float(p)) for p in rng.uniform(0, 1, size=n)])
            for n in rng.integers(1, 6, size=2)
        ]
        by_session = max(range(2), key=lambda k: (st.confidence(pair[k][2]), -k))
        assert uc.choose("mean", pair) == by_session
