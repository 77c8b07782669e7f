"""The streaming decoder on the real base model: what `StreamingSession` relies on it for."""

from __future__ import annotations

import pytest
from conftest import MODELS_DIR

from asr_mesh.services.transcription import streaming as st
from support.metrics import wer

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def model():
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(MODELS_DIR / "whisper-base"),
        device="cpu",
        compute_type="int8",
        cpu_threads=2,
        local_files_only=True,
    )


def test_a_prefix_is_taken_as_the_transcript_s_start_and_the_rest_is_decoded(
    model, corpus, manifest
):
    """`context_prefix`: the context's committed words given as Whisper's prefix come back
    first, word for word, aligned inside the context; the buffer after it is decoded as without
    the prefix."""
    from faster_whisper import decode_audio

    audio = decode_audio(str(corpus / manifest["dia"][1]["audio"]))[: 30 * st.SAMPLE_RATE]
    decoder = st.WhisperDecoder(model, "pt", beam_size=1, context_pad_s=1.0)
    plain = [w for s in decoder(audio, "") for w in s.words]
    # Where the context would end: the longest pause between two words in the middle third.
    middle = [k for k in range(1, len(plain)) if 10.0 <= plain[k].start <= 20.0]
    cut = max(middle, key=lambda k: plain[k].start - plain[k - 1].end)
    lead = (plain[cut - 1].end + plain[cut].start) / 2
    said = [w.word.strip() for w in plain[:cut]]
    said[1] = "banana"  # not what it would hear: the words come from the prefix
    mark = st.timestamp_token(lead)

    words = [w for s in decoder(audio, "", " ".join(said) + mark + mark) for w in s.words]

    assert [w.word.strip() for w in words[: len(said)]] == said
    assert all(w.start < lead + 0.3 for w in words[: len(said)])
    rest = words[len(said) :]
    assert rest and all(lead - 0.3 <= w.start and w.end <= 30.0 for w in rest)
    expected = " ".join(w.word for w in plain[cut:])
    assert wer([expected], [" ".join(w.word for w in rest)]) < 0.3


def test_a_long_prompt_and_a_prefix_still_fit_whisper_s_448_tokens(model, corpus, manifest):
    """A caller's 1,000-character initial prompt (the longest accepted) is the prompt of every
    `accurate` closing decode; with the context's prefix on top, faster-whisper would refuse a
    token budget past 448 tokens: the budget shrinks instead."""
    from faster_whisper import decode_audio

    conv = manifest["dia"][0]
    audio = decode_audio(str(corpus / conv["audio"]))[: 25 * st.SAMPLE_RATE]
    prompt = (conv["text"] + " ") * 8
    prompt = prompt[: prompt.rfind(" ", 0, 1000)]
    prefix = " ".join(conv["text"].split()[:40]) + "<|8.00|><|8.00|>"
    assert st.count_tokens(model, prompt) > 223 and st.count_tokens(model, prefix) > 40
    decoder = st.WhisperDecoder(model, "pt", beam_size=3, context_pad_s=1.0)
    words = [w for s in decoder(audio, prompt, prefix) for w in s.words]
    assert len(words) > 40
