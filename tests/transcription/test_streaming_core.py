"""The streaming core without a model: commit logic against scripted hypotheses.

A scripted decoder plays Whisper: it "hears" the words of a known transcript that lie inside
the audio it is given, with timestamps that wobble between calls and a last word that is wrong
while it is cut off by the buffer's end. The invariant: the final results, concatenated, are
the transcript, every word exactly once, whatever the chunking, profile or endpointing.
"""

from __future__ import annotations

import random
import threading
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asr_mesh.services.common.domain import SAMPLE_RATE, Segment, Word
from asr_mesh.services.common.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    UploadStalled,
)
from asr_mesh.services.transcription import guards
from asr_mesh.services.transcription import streaming as s

VOCAB = (
    "bom dia eu gostaria de saber o saldo da minha conta corrente claro pode me informar "
    "número do seu documento por favor sim três quatro cinco"
).split()


def script(
    rng: random.Random, n_words: int, pause_every: int = 0, pause_s: float = 1.2
) -> list[Word]:
    """A transcript: words with times, an optional pause (utterance end) every `pause_every` words."""
    words, t = [], 0.3
    for i in range(n_words):
        if pause_every and i and i % pause_every == 0:
            t += pause_s
        d = rng.uniform(0.2, 0.5)
        words.append(Word(t, t + d, rng.choice(VOCAB), 0.9))
        t += d + rng.uniform(0.05, 0.15)
    return words


class ScriptedDecoder:
    """Hears the script's words inside [buffer_start, buffer_start + len(audio)]."""

    def __init__(
        self, truth: list[Word], rng: random.Random, jitter: float = 0.05, garble_tail: bool = True
    ):
        self.truth, self.rng, self.jitter, self.garble_tail = truth, rng, jitter, garble_tail
        self.session: s.StreamingSession | None = None
        self.prompts: list[str] = []
        self.prefixes: list[str] = []
        self.layouts: list[list[tuple[float, float]]] = []  # what each decode heard
        self.calls = 0

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        self.prompts.append(prompt)
        self.prefixes.append(prefix)
        self.calls = len(self.prompts)
        # The audio is the session's context pieces (earlier speech) then its buffer.
        layout = self.session.heard_layout()
        self.layouts.append(layout)
        assert abs(sum(d for _, d in layout) - len(audio) / SAMPLE_RATE) < 1e-3
        heard, offset = [], 0.0
        for start, seconds in layout:
            end = start + seconds
            for w in self.truth:
                if w.start < start - 1e-6 or w.start >= end:
                    continue
                j = self.rng.uniform(-self.jitter, self.jitter)
                word = w.word
                if w.end > end and self.garble_tail:  # cut off: Whisper guesses something else
                    word = word[: max(1, len(word) // 2)] + f"x{self.rng.randint(0, 999)}"
                heard.append(
                    Word(
                        offset + max(0.0, w.start + j - start),
                        offset + min(w.end, end) + j - start,
                        word,
                        0.8,
                    )
                )
            offset += seconds
        # Segments of five words, as Whisper would emit sentences.
        return [
            Segment(
                i,
                g[0].start,
                g[-1].end,
                " ".join(w.word for w in g),
                tuple(g),
                avg_logprob=-0.2,
                no_speech_prob=0.01,
                compression_ratio=1.2,
            )
            for i, g in enumerate(heard[k : k + 5] for k in range(0, len(heard), 5))
        ]


def script_vad(truth: list[Word], session_ref: list) -> s.VadFn:
    """Speech where the script has words; a range still open at the audio's end reaches it."""

    def detect(audio: np.ndarray) -> list[tuple[float, float]]:
        # The audio is the buffer or its tail (endpoint checks): both end at what was received.
        end = session_ref[0].received_s
        start = end - len(audio) / SAMPLE_RATE
        ranges: list[list[float]] = []
        for w in truth:
            a, b = max(w.start, start), min(w.end, end)
            if b <= a:
                continue
            if ranges and a - ranges[-1][1] < 0.25:
                ranges[-1][1] = b
            else:
                ranges.append([a, b])
        out = []
        for a, b in ranges:
            if end - b < 0.1:  # silero closes a range only after a short silence
                b = end
            out.append((a - start, b - start))
        return out

    return detect


def scripted_session(
    truth: list[Word],
    decoder: ScriptedDecoder,
    options: s.SessionOptions | None = None,
    profile: s.LatencyProfile | None = None,
    **decoders,
) -> s.StreamingSession:
    """A session over `truth` with the script's VAD: `decoder` (and the `rescue`/`closing`
    decoders, if given) told their session; `options` resolved as the service does, `profile`
    (when given) instead of the one they name."""
    ref: list = []
    resolved, named = s.resolve_options(options or s.SessionOptions(), 3600)
    session = s.StreamingSession(
        decoder, script_vad(truth, ref), resolved, profile or named, **decoders
    )
    for d in (decoder, *decoders.values()):
        if isinstance(d, ScriptedDecoder):
            d.session = session
    ref.append(session)
    return session


def run(
    truth,
    rng,
    *,
    profile="balanced",
    endpointing=True,
    chunk_s=0.1,
    tail_s=2.0,
    interim=True,
    vad=True,
    garble=True,
) -> tuple[s.StreamingSession, list]:
    decoder = ScriptedDecoder(truth, rng, garble_tail=garble)
    ref: list = []
    options, prof = s.resolve_options(
        s.SessionOptions(profile=profile, endpointing=endpointing, interim_results=interim), 3600
    )
    session = s.StreamingSession(decoder, script_vad(truth, ref) if vad else None, options, prof)
    decoder.session = session
    ref.append(session)
    total = truth[-1].end + tail_s
    n = int(chunk_s * SAMPLE_RATE)
    events = []
    for _ in range(int(total / chunk_s) + 1):
        session.push(np.zeros(n, dtype=np.int16))
        if session.due():
            events.extend(session.step())
    events.extend(session.finish())
    return session, events


def finals(events) -> list[s.Final]:
    return [e for e in events if isinstance(e, s.Final)]


def final_words(events) -> list[str]:
    return [w.word for f in finals(events) for w in f.segment.words]


@pytest.mark.parametrize("profile", sorted(s.PROFILES))
@pytest.mark.parametrize("endpointing", [True, False])
def test_every_word_committed_exactly_once(profile, endpointing):
    rng = random.Random(7)
    truth = script(rng, 60, pause_every=12)
    _, events = run(truth, rng, profile=profile, endpointing=endpointing)
    assert final_words(events) == [w.word for w in truth]


@given(
    seed=st.integers(0, 10_000),
    chunk_ms=st.sampled_from([20, 100, 250, 500]),
    pause_every=st.integers(0, 9),
    profile=st.sampled_from(sorted(s.PROFILES)),
    endpointing=st.booleans(),
    vad=st.booleans(),
)
def test_commit_boundaries_property(seed, chunk_ms, pause_every, profile, endpointing, vad):
    rng = random.Random(seed)
    truth = script(rng, rng.randint(1, 40), pause_every=pause_every)
    session, events = run(
        truth, rng, profile=profile, endpointing=endpointing, chunk_s=chunk_ms / 1000, vad=vad
    )
    assert final_words(events) == [w.word for w in truth]
    fs = finals(events)
    # Finals come in time order, never overlap, and their ids count up from 0.
    assert [f.segment.id for f in fs] == list(range(len(fs)))
    for a, b in zip(fs, fs[1:]):
        assert a.segment.words[-1].end <= b.segment.words[0].end
    assert isinstance(events[-1], s.StreamSummary)
    assert events[-1].final_count == len(fs)
    # Speech events pair up: begin, end, begin, end...
    kinds = [e.kind for e in events if isinstance(e, s.SpeechEvent)]
    assert kinds == ["begin", "end"] * (len(kinds) // 2)
    # The buffer stayed bounded.
    assert session.buffer_s <= s.PROFILES[profile].max_buffer_s + 2 * s.PROFILES[profile].step_s + 1


def test_endpoint_closes_each_utterance_with_speech_events():
    rng = random.Random(3)
    truth = script(rng, 24, pause_every=8, pause_s=1.5)
    _, events = run(truth, rng)
    kinds = [e.kind for e in events if isinstance(e, s.SpeechEvent)]
    assert kinds == ["begin", "end"] * 3
    # Every utterance's last word is in a final marked end_of_utterance, before its speech end.
    closing = [f for f in finals(events) if f.end_of_utterance]
    assert [f.segment.words[-1].word for f in closing] == [truth[k].word for k in (7, 15, 23)]
    for event_index, event in enumerate(events):
        if isinstance(event, s.SpeechEvent) and event.kind == "end":
            assert isinstance(events[event_index - 1], (s.Final, s.Interim))


def test_interims_precede_the_finals_that_replace_them():
    rng = random.Random(11)
    truth = script(rng, 20)
    _, events = run(truth, rng)
    first_interim = next(i for i, e in enumerate(events) if isinstance(e, s.Interim))
    first_final = next(i for i, e in enumerate(events) if isinstance(e, s.Final))
    assert first_interim < first_final
    interims = [e for e in events if isinstance(e, s.Interim)]
    assert all(0.0 <= e.stability <= 1.0 for e in interims)
    # Consecutive interims differ (unchanged text is not sent again).
    assert all(
        a.text != b.text
        for a, b in zip(interims, interims[1:])
        if not any(isinstance(e, s.Final) for e in events[events.index(a) : events.index(b)])
    )


def test_no_interims_when_not_asked():
    rng = random.Random(5)
    truth = script(rng, 10)
    _, events = run(truth, rng, interim=False)
    assert not [e for e in events if isinstance(e, s.Interim)]
    assert final_words(events) == [w.word for w in truth]


def test_silence_is_never_decoded():
    rng = random.Random(1)
    decoder = ScriptedDecoder([], rng)
    options, prof = s.resolve_options(s.SessionOptions(), 3600)
    session = s.StreamingSession(decoder, lambda audio: [], options, prof)
    decoder.session = session
    for _ in range(100):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            assert session.step() == []
    events = session.finish()
    assert decoder.prompts == []  # the model never ran
    assert [type(e) for e in events] == [s.StreamSummary]
    assert session.buffer_s <= 1.0 + prof.step_s  # silence does not pile up


def test_committed_text_outside_the_buffer_is_the_prompt():
    rng = random.Random(2)
    truth = script(rng, 30, pause_every=10)
    decoder = ScriptedDecoder(truth, rng)
    session = scripted_session(truth, decoder, s.SessionOptions(initial_prompt="Itaú Pix"))
    for _ in range(int((truth[-1].end + 2) / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            session.step()
    session.finish()
    assert decoder.prompts[0] == "Itaú Pix"
    # After the first utterance is committed and trimmed away, its words are the context.
    assert any(truth[9].word in p and p.startswith("Itaú Pix") for p in decoder.prompts[1:])
    assert all(len(p) <= s.PROMPT_CHARS + 20 for p in decoder.prompts)


def test_new_words_drops_the_committed_tail_despite_timestamp_wobble():
    committed = [Word(0.0, 0.4, "bom", 1), Word(0.5, 0.9, "dia", 1)]
    hyp = [Word(0.05, 0.45, "Bom", 1), Word(0.45, 0.95, "dia,", 1), Word(1.0, 1.3, "eu", 1)]
    assert [w.word for w in s.new_words(hyp, committed, 0.9)] == ["eu"]
    # A word that starts before the commit point but is new (its neighbour was re-timed) stays.
    hyp = [Word(0.85, 1.2, "eu", 1)]
    assert [w.word for w in s.new_words(hyp, committed, 0.9)] == ["eu"]


def test_stability_is_the_share_of_words_the_previous_decode_had():
    words = [Word(i, i + 1, w, 1) for i, w in enumerate("o saldo da conta".split())]
    assert s.stability(words, words) == 1.0
    assert s.stability(words, words[:2]) == 0.5
    assert s.stability(words, []) == 0.0


def test_agreement_needs_n_hypotheses():
    a = [Word(0, 1, "a", 1), Word(1, 2, "b", 1), Word(2, 3, "c", 1)]
    b = [Word(0, 1, "A.", 1), Word(1, 2, "b", 1), Word(2, 3, "x", 1)]
    assert s.agreed_prefix([a, b]) == 2
    assert s.agreed_prefix([a, b, [Word(0, 1, "a", 1)]]) == 1
    assert s.agreed_prefix([a]) == 3


def test_loops_are_cut_from_committed_text():
    # Said once, then copies squeezed after it (a loop's timing; not so squeezed that the
    # untimed-words guard takes them).
    looped = [Word(0.5, 1.0, "obrigado", 0.5)]
    looped += [Word(1.0 + 0.1 * i, 1.1 + 0.1 * i, "obrigado", 0.5) for i in range(7)]

    def decoder(audio, prompt, prefix=""):
        return [
            Segment(
                0,
                0.5,
                1.7,
                " ".join(w.word for w in looped),
                tuple(looped),
                avg_logprob=-0.3,
                compression_ratio=1.5,
            )
        ]

    options, prof = s.resolve_options(s.SessionOptions(), 3600)
    session = s.StreamingSession(decoder, None, options, prof)
    session.push(np.zeros(SAMPLE_RATE * 2, dtype=np.int16))
    events = session.finish()
    assert final_words(events) == ["obrigado"] * 3
    assert events[-1].words_removed == 5


def test_text_the_model_calls_silence_is_dropped():
    def decoder(audio, prompt, prefix=""):
        return [
            Segment(
                0,
                0.0,
                1.0,
                "Legendas pela comunidade",
                (Word(0.1, 0.9, "Legendas", 0.2),),
                avg_logprob=-1.5,
                no_speech_prob=0.9,
                compression_ratio=1.0,
            )
        ]

    options, prof = s.resolve_options(s.SessionOptions(), 3600)
    session = s.StreamingSession(decoder, None, options, prof)
    session.push(np.zeros(SAMPLE_RATE * 2, dtype=np.int16))
    assert finals(session.finish()) == []


def test_session_length_is_bounded():
    options, prof = s.resolve_options(s.SessionOptions(max_session_s=1.0), 3600)
    session = s.StreamingSession(lambda a, p, x="": [], None, options, prof)
    session.push(np.zeros(SAMPLE_RATE, dtype=np.int16))
    with pytest.raises(DeadlineExceeded, match="maximum length of 1 s"):
        session.push(np.zeros(160, dtype=np.int16))


@pytest.mark.parametrize(
    "options, field",
    [
        (s.SessionOptions(profile="turbo"), "latency_profile"),
        (s.SessionOptions(language=None), "language_code"),
        (s.SessionOptions(endpoint_silence_s=9), "endpointing"),
        (s.SessionOptions(max_session_s=7200), "max_session_duration"),
    ],
)
def test_bad_options_are_refused(options, field):
    with pytest.raises(InvalidInput) as err:
        s.resolve_options(options, 3600)
    assert field in err.value.field


def test_limiter_refuses_beyond_its_sessions_with_retry_info():
    seen = []
    limiter = s.SessionLimiter(2, on_change=seen.append)
    with limiter, limiter:
        with pytest.raises(Overloaded) as err:
            with limiter:
                pass
        assert err.value.retry_after_s > 0
    assert limiter.active == 0 and seen == [1, 2, 1, 0]


def test_inbox_times_out_an_idle_caller_and_honours_cancel():
    inbox = s.Inbox()
    inbox.put(np.zeros(10, dtype=np.int16))
    chunks, ended = inbox.take(0.2)
    assert len(chunks) == 1 and not ended
    with pytest.raises(UploadStalled, match="no audio arrived for 0.2 s"):
        inbox.take(0.2)
    inbox = s.Inbox()
    threading.Timer(0.05, inbox.cancel).start()
    with pytest.raises(Cancelled):
        inbox.take(5)


def test_drive_runs_a_session_from_another_thread():
    rng = random.Random(9)
    truth = script(rng, 15, pause_every=5)
    decoder = ScriptedDecoder(truth, rng)
    session = scripted_session(truth, decoder)
    inbox = s.Inbox()

    def feed():
        for _ in range(int((truth[-1].end + 1) / 0.05)):
            inbox.put(np.zeros(800, dtype=np.int16))
        inbox.close()

    threading.Thread(target=feed).start()
    emitted = list(s.drive(session, inbox, idle_timeout_s=5))
    events = [e.event for e in emitted]
    assert final_words(events) == [w.word for w in truth]
    assert all(e.audio_arrived_at is not None for e in emitted if isinstance(e.event, s.Final))


def test_an_utterance_is_final_one_check_after_the_endpoint_silence():
    """Audio time, not wall time: the closing final comes within the endpoint silence plus one
    endpoint check of the utterance's last word (no waiting for the next decode step)."""
    rng = random.Random(4)
    truth = script(rng, 24, pause_every=8, pause_s=2.0)
    decoder = ScriptedDecoder(truth, rng)
    session = scripted_session(truth, decoder, s.SessionOptions(profile="accurate"))
    delays = []
    for _ in range(int((truth[-1].end + 2) / 0.05)):
        session.push(np.zeros(800, dtype=np.int16))
        if session.due():
            for event in session.step():
                if isinstance(event, s.Final) and event.end_of_utterance:
                    delays.append(session.received_s - event.segment.words[-1].end)
    assert len(delays) == 3
    prof = session.profile
    assert max(delays) <= prof.endpoint_silence_s + s.ENDPOINT_CHECK_S + 0.1, delays
    assert decoder.calls < (truth[-1].end + 2) / prof.step_s + 4  # checks are not decodes


def test_a_decode_runs_when_speech_stops_so_the_endpoint_needs_none():
    """Speculative decode: once VAD hears `speculate_silence_s` of silence after speech that the
    last decode did not hear whole, a decode runs at once (not at the next step); the endpoint
    then commits the utterance from it, so no decode runs between the endpoint silence and the
    closing final."""
    rng = random.Random(6)
    truth = script(rng, 24, pause_every=8, pause_s=2.0)
    decoder = ScriptedDecoder(truth, rng)
    session = scripted_session(
        truth,
        decoder,
        s.SessionOptions(profile="balanced", endpoint_silence_s=0.6),
        replace(
            s.PROFILES["balanced"], step_s=1.5, speculate_silence_s=0.2, endpoint_silence_s=0.6
        ),
    )
    decoded_at: list[float] = []
    closing: list[tuple[s.Final, float, bool]] = []
    events: list = []
    for _ in range(int((truth[-1].end + 2) / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            calls = decoder.calls
            events.extend(stepped := session.step())
            for event in stepped:
                if isinstance(event, s.Final) and event.end_of_utterance:
                    closing.append((event, session.received_s, decoder.calls > calls))
            if decoder.calls > calls:
                decoded_at.append(session.received_s)
    ends = [truth[k].end for k in (7, 15, 23)]
    assert [f.segment.words[-1].word for f, _, _ in closing] == [truth[k].word for k in (7, 15, 23)]
    for end, (_, made_at, decoded) in zip(ends, closing):
        # A decode came within the speculation silence plus a check or two of the phrase end...
        assert any(end + 0.2 <= t <= end + 0.2 + 2 * s.ENDPOINT_CHECK_S + 0.1 for t in decoded_at)
        # ...and the closing final one endpoint check after the silence, without a decode.
        assert not decoded
        assert made_at <= end + 0.6 + s.ENDPOINT_CHECK_S + 0.1
    # Never twice, never lost.
    events.extend(session.finish())
    assert final_words(events) == [w.word for w in truth]


def test_speculation_keeps_every_word_exactly_once():
    for seed in range(30):
        rng = random.Random(seed)
        truth = script(rng, rng.randint(5, 40), pause_every=rng.randint(0, 9), pause_s=0.4)
        decoder = ScriptedDecoder(truth, rng)
        profile = replace(s.PROFILES[s.DEFAULT_PROFILE], speculate_silence_s=0.2)
        session = scripted_session(truth, decoder, profile=profile)
        events = []
        for _ in range(int((truth[-1].end + 1.5) / 0.1)):
            session.push(np.zeros(1600, dtype=np.int16))
            if session.due():
                events.extend(session.step())
        events.extend(session.finish())
        assert final_words(events) == [w.word for w in truth], seed


def test_audio_context_covers_the_buffer_and_its_padding_in_whole_seconds():
    assert s.audio_context(3.2, 1.0) == 500
    assert s.audio_context(4.0, 1.0) == 500
    assert s.audio_context(0.1, 0.5) == 200  # never below 2 s
    assert s.audio_context(29.5, 2.0) == s.FULL_CONTEXT_FRAMES
    # Stride-2 convolution: always an even number of frames.
    assert all(s.audio_context(x / 10, 1.0) % 2 == 0 for x in range(1, 300))


def _decode_times(seed: int, speculate: float, defer: bool = True):
    rng = random.Random(seed)
    truth = script(rng, 60, pause_every=5, pause_s=1.0)
    decoder = ScriptedDecoder(truth, rng)
    profile = replace(s.PROFILES[s.DEFAULT_PROFILE], step_s=1.0, speculate_silence_s=speculate)
    session = scripted_session(truth, decoder, profile=profile)
    if not defer:
        session._just_paused = lambda: False  # type: ignore[method-assign]
    decoded_at, events = [], []
    for _ in range(int((truth[-1].end + 1.5) / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            calls = decoder.calls
            events.extend(session.step())
            if decoder.calls > calls:
                decoded_at.append(session.received_s)
    events.extend(session.finish())
    ends = [truth[k].end for k in range(4, 60, 5)]
    return truth, ends, decoded_at, events


def test_a_step_due_just_after_speech_stops_waits_for_the_decode_that_hears_it_all():
    """No decode starts while the speaker has paused for less than `speculate_silence_s`: it
    would miss the phrase's last sounds and keep the CPU busy when the decode that hears them
    is due."""
    truth, ends, decoded_at, events = _decode_times(8, speculate=0.3)
    # (The scripted VAD closes a speech range 0.1 s after its last word.)
    assert not [t for t in decoded_at for e in ends if e + 0.1 < t < e + 0.3 - 1e-6]
    assert final_words(events) == [w.word for w in truth]
    # Without the rule, grid steps do land there (the test would catch its loss).
    _, ends, decoded_at, _ = _decode_times(8, speculate=0.3, defer=False)
    assert [t for t in decoded_at for e in ends if e + 0.1 < t < e + 0.3 - 1e-6]


def test_a_decode_token_budget_grows_with_the_audio_and_leaves_room_for_the_prompt():
    assert s.max_new_tokens(1.0) < s.max_new_tokens(5.0) < s.max_new_tokens(10.0)
    # Fast speech (4 words/s, 2 tokens a word) fits; a 448-token loop does not.
    assert s.max_new_tokens(3.0) >= 3 * 8 + 4
    assert s.max_new_tokens(3.0) < 100
    # Prompt (at most PROMPT_CHARS characters, 1 token each at worst, and the 4-token start
    # sequence) + budget < 448, the model's limit.
    assert s.PROMPT_CHARS + 4 + max(s.max_new_tokens(x) for x in range(0, 40)) < 448


class LoopingDecoder(ScriptedDecoder):
    """Every decode loops (Whisper repeating a phrase): the compression-ratio guard drops it."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        return [replace(seg, compression_ratio=4.0) for seg in super().__call__(audio, prompt)]


def _looping_session(truth, rng, rescue):
    decoder = LoopingDecoder(truth, rng, garble_tail=False)
    session = scripted_session(truth, decoder, rescue=rescue)
    events = []
    for _ in range(int((truth[-1].end + 2.0) / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            events += session.step()
    return session, events + session.finish()


def test_an_utterance_whose_decodes_all_loop_is_rescued_not_dropped():
    rng = random.Random(11)
    truth = script(rng, 12, pause_every=6)
    _, lost = _looping_session(truth, random.Random(1), rescue=None)
    assert final_words(lost) == []  # without a rescue every phrase is dropped
    rescue = ScriptedDecoder(truth, random.Random(2), garble_tail=False)
    session, events = _looping_session(truth, random.Random(1), rescue=rescue)
    assert final_words(events) == [w.word for w in truth]  # each word once, none lost
    assert session.counters.rescues >= 2  # one careful decode per utterance end
    assert set(rescue.prompts) == {""}  # no (possibly garbled) prompt for the careful decode


def test_decodes_hear_earlier_speech_without_its_pauses_and_use_only_the_buffers_words():
    truth, decoder, layouts, events = _context_run(context_s=4.0)
    assert final_words(events) == [w.word for w in truth]  # none twice, none lost
    with_context = [layout for layout in layouts if len(layout) > 1]
    assert with_context, "no decode heard any context"
    first_pause_end = truth[10].start
    for layout in with_context:
        (buffer_start, _), context = max(layout), sorted(layout)[:-1]
        # Earlier speech only, in time order, ending where the buffer starts, at most 4 s.
        assert sum(d for _, d in context) <= 4.0 + 1e-6
        assert all(a + d <= b + 1e-6 for (a, d), (b, _) in zip(context, context[1:]))
        assert context[-1][0] + context[-1][1] <= buffer_start + 1e-6
        # The 1.2 s pause between utterances is not in it: pieces are speech (± 0.1 s).
        for start, seconds in context:
            inside = [w for w in truth if start - 0.2 <= w.start and w.end <= start + seconds + 0.2]
            assert inside, f"a context piece at {start:.2f} s holds no speech"
    assert any(max(layout)[0] >= first_pause_end - 1.3 for layout in with_context)


@pytest.mark.parametrize("context_prompt", [True, False])
def test_the_prompt_leaves_out_what_the_context_makes_the_decoder_hear_again(context_prompt):
    truth, decoder, layouts, _ = _context_run(
        context_s=4.0, unique=True, context_prompt=context_prompt
    )
    said_at = {w.word: w.start for w in truth}
    with_context = [p for layout, p in zip(layouts, decoder.prompts) if len(layout) > 1]
    assert with_context
    if not context_prompt:  # the audio alone carries the conversation
        assert set(with_context) == {""}
    prompted = 0
    for layout, prompt in zip(layouts, decoder.prompts):
        heard_from = min(layout)[0]
        # Every prompt word was said before the first audio this decode hears...
        assert all(said_at[word] < heard_from for word in prompt.split())
        # ...and the prompt is the committed text just before it (none skipped).
        before = [w.word for w in truth if w.start < heard_from]
        if prompt and before:
            prompted += 1
            assert prompt.split()[-1] in before[-2:]
    assert prompted


def test_without_context_a_decode_hears_the_buffer_only():
    _, _, layouts, events = _context_run(context_s=0.0)
    assert all(len(layout) == 1 for layout in layouts)


def _run_profile(
    truth,
    rng,
    decoder_type: type[ScriptedDecoder] = ScriptedDecoder,
    closing: ScriptedDecoder | None = None,
    **fields,
) -> tuple[ScriptedDecoder, list]:
    """`run`'s session (decoder of `decoder_type`; `closing` for the closing decodes, if
    given) with some of the balanced profile's fields changed."""
    decoder = decoder_type(truth, rng)
    profile = replace(s.PROFILES[s.DEFAULT_PROFILE], **fields)
    session = scripted_session(truth, decoder, profile=profile, closing=closing)
    return decoder, _stream_through(session, truth)


def _stream_through(session: s.StreamingSession, truth: list[Word]) -> list:
    """Feed `session` 0.1 s chunks until 2 s after the script's last word, then finish it."""
    events = []
    for _ in range(int((truth[-1].end + 2) / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            events.extend(session.step())
    return events + session.finish()


def _streamed(truth: list[Word], decoder: ScriptedDecoder, profile: str, **fields) -> list:
    """`truth` streamed through a session of the named profile with `fields` changed."""
    chosen = replace(s.PROFILES[profile], **fields)
    session = scripted_session(truth, decoder, s.SessionOptions(profile=profile), chosen)
    return _stream_through(session, truth)


def _context_run(context_s: float, seed: int = 4, unique: bool = False, **fields):
    """Three utterances of 10 words with 1.2 s pauses, a decoder that records what it hears
    (`unique`: every word different, so a prompt's words can be placed in time)."""
    rng = random.Random(seed)
    truth = script(rng, 30, pause_every=10)
    if unique:
        truth = [replace(w, word=f"{w.word}{i}") for i, w in enumerate(truth)]
    decoder, events = _run_profile(truth, rng, context_s=context_s, **fields)
    return truth, decoder, decoder.layouts, events


def test_short_utterances_become_final_at_their_endpoint_when_agreement_waits():
    rng = random.Random(8)
    truth = script(rng, 30, pause_every=10)  # three utterances of ~4 s
    _, eager = _run_profile(truth, random.Random(8), agree_after_s=0.0)
    _, patient = _run_profile(truth, random.Random(8), agree_after_s=8.0)
    assert final_words(eager) == final_words(patient) == [w.word for w in truth]
    assert any(not f.end_of_utterance for f in finals(eager))  # agreement commits mid-phrase
    assert [f.end_of_utterance for f in finals(patient)] == [True] * 3  # one final a phrase


def test_a_long_utterance_is_still_committed_by_agreement_past_agree_after_s():
    rng = random.Random(9)
    truth = script(rng, 60)  # one ~25 s utterance, no pause
    _, events = _run_profile(truth, rng, agree_after_s=8.0)
    assert final_words(events) == [w.word for w in truth]
    early = [f for f in finals(events) if not f.end_of_utterance]
    assert early and early[0].segment.end < truth[-1].end - 5  # finals before the phrase ends


class ContextDeafDecoder(ScriptedDecoder):
    """Hears nothing whenever it also hears the context (Whisper ending its transcript with the
    context's speech)."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        segments = super().__call__(audio, prompt)
        return [] if len(self.layouts[-1]) > 1 else segments


def test_a_phrase_the_context_decode_drops_is_decoded_alone_not_lost():
    rng = random.Random(4)
    truth = script(rng, 30, pause_every=10)
    decoder, events = _run_profile(truth, rng, ContextDeafDecoder)
    assert any(len(layout) > 1 for layout in decoder.layouts)  # the context was heard
    assert final_words(events) == [w.word for w in truth]  # and no phrase was lost to it


class ContextTruncatingDecoder(ScriptedDecoder):
    """Whenever it also hears the context, stops its transcript two words into the buffer."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        segments = super().__call__(audio, prompt)
        if len(self.layouts[-1]) == 1:
            return segments
        lead = sum(seconds for _, seconds in self.layouts[-1][:-1])
        said = [w for seg in segments for w in seg.words]
        keep = [w for w in said if w.start < lead] + [w for w in said if w.start >= lead][:2]
        return [replace(segments[0], end=keep[-1].end, words=tuple(keep))] if keep else []


def test_speech_a_context_decode_leaves_out_of_an_utterance_is_not_lost():
    rng = random.Random(5)
    truth = script(rng, 40, pause_every=10)
    decoder, events = _run_profile(truth, rng, ContextTruncatingDecoder)
    assert any(len(layout) > 1 for layout in decoder.layouts)
    assert final_words(events) == [w.word for w in truth]


class ContextFirstPhraseDecoder(ScriptedDecoder):
    """Whenever it also hears the context, stops its transcript at the buffer's first pause."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        segments = super().__call__(audio, prompt)
        if len(self.layouts[-1]) == 1:
            return segments
        lead = sum(seconds for _, seconds in self.layouts[-1][:-1])
        said = [w for seg in segments for w in seg.words]
        keep = [w for w in said if w.start < lead]
        for w in (w for w in said if w.start >= lead):
            if keep and keep[-1].end > lead and w.start - keep[-1].end >= 0.5:
                break
            keep.append(w)
        return [replace(segments[0], end=keep[-1].end, words=tuple(keep))] if keep else []


def test_every_phrase_still_in_the_buffer_when_the_stream_ends_is_final():
    # The machine fell behind: the last two phrases arrive at once and the stream ends. The
    # closing decode hears the context and stops after the first of them.
    rng = random.Random(9)
    truth = script(rng, 40, pause_every=10)
    decoder = ContextFirstPhraseDecoder(truth, rng)
    session = scripted_session(truth, decoder)
    events = []
    for _ in range(int((truth[19].end + 1.0) / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            events.extend(session.step())
    rest = int((truth[-1].end + 2.0) * SAMPLE_RATE) - int(session.received_s * SAMPLE_RATE)
    session.push(np.zeros(rest, dtype=np.int16))
    events += session.finish()
    assert any(len(layout) > 1 for layout in decoder.layouts[-2:])
    assert final_words(events) == [w.word for w in truth]


class EchoingDecoder(ScriptedDecoder):
    """Says its last five words again, untimed, at the end of every transcript."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        segments = super().__call__(audio, prompt)
        said = [w for seg in segments for w in seg.words]
        if len(said) < 5:
            return segments
        end = said[-1].end
        echo = tuple(Word(end, end, w.word, 0.99) for w in said[-5:])
        return [*segments, Segment(len(segments), end, end, "", echo, compression_ratio=1.2)]


def test_a_sentence_said_again_in_no_time_is_not_committed():
    rng = random.Random(8)
    truth = script(rng, 30, pause_every=10)
    _, events = _run_profile(truth, rng, EchoingDecoder)
    assert final_words(events) == [w.word for w in truth]


class SilenceFirstDecoder(ScriptedDecoder):
    """Hears nothing when its buffer opens with more than 0.6 s of silence: Whisper's no-speech
    rule, which faster-whisper applies to the whole window (seen on a conversation in pink
    noise: a phrase after a 1 s pause got no final at all)."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        segments = super().__call__(audio, prompt)
        start, seconds = self.layouts[-1][-1]
        onset = min(
            (w.start for w in self.truth if start <= w.start < start + seconds), default=None
        )
        return [] if onset is None or onset - start > 0.6 else segments


@pytest.mark.parametrize("profile", sorted(s.PROFILES))
def test_the_pause_before_a_phrase_is_cut_so_the_decoder_does_not_call_it_silence(profile):
    rng = random.Random(11)
    truth = script(rng, 40, pause_every=10, pause_s=1.5)
    chosen = s.PROFILES[profile]
    for keep in (chosen.lead_silence_s, 0.0):
        decoder = SilenceFirstDecoder(truth, random.Random(11))
        session = scripted_session(truth, decoder, profile=replace(chosen, lead_silence_s=keep))
        events = _stream_through(session, truth)
        if keep:
            assert final_words(events) == [w.word for w in truth]
            assert all(  # no decode heard more than `keep` (and a chunk) before the speech
                min((w.start for w in truth if a <= w.start < a + d), default=a) - a
                <= keep + 0.1 + 1e-6
                for a, d in (layout[-1] for layout in decoder.layouts)
            )
        else:  # what the profile's setting is for: kept whole, the pause loses phrases
            assert len(final_words(events)) < len(truth)


def _sentences_with_breaths(rng: random.Random, breath_s: float) -> list[Word]:
    """Four sentences of 8 words, 1.2 s apart, each with a pause of `breath_s` between its fourth
    and fifth words (Kokoro's voices, like people, pause 0.2-0.3 s between words inside a sentence)."""
    words, t = [], 0.3
    for i in range(32):
        if i and i % 8 == 0:
            t += 1.2
        elif i % 8 == 4:
            t += breath_s - 0.05  # the gap after every word is 0.05 s
        d = rng.uniform(0.2, 0.4)
        words.append(Word(t, t + d, rng.choice(VOCAB), 0.9))
        t += d + 0.05
    return words


@pytest.mark.parametrize("profile", sorted(s.PROFILES))
def test_a_pause_inside_a_sentence_shorter_than_the_endpoint_does_not_end_the_utterance(profile):
    # The breath is 0.26 s: VAD sees two ranges, shorter apart than any profile's endpoint. At
    # the next word's onset the new range is shorter than `min_speech_s` for a while; counted as
    # a click, the pause ran on to 0.36 s and more, and a 0.3 s endpoint cut the sentence.
    rng = random.Random(5)
    truth = _sentences_with_breaths(rng, 0.26)
    breaths = [(truth[i - 1].end, truth[i].start) for i in range(4, 32, 8)]
    chosen = s.PROFILES[profile]
    for count in (True, False):
        decoder = ScriptedDecoder(truth, random.Random(5))
        events = _streamed(truth, decoder, profile, count_onsets=count)
        assert final_words(events) == [w.word for w in truth]
        ends = [e.offset for e in events if isinstance(e, s.SpeechEvent) and e.kind == "end"]
        cut = [e for e in ends if any(a - 0.01 <= e <= b for a, b in breaths)]
        if count:
            assert len(ends) == 4 and not cut  # one utterance a sentence
        elif chosen.endpoint_silence_s < 0.26 + chosen.min_speech_s:
            assert cut  # what the setting is for: the old measure cut sentences in two


class LoneWordDeafDecoder(ScriptedDecoder):
    """Like Whisper on a lone short word: a buffer holding one word and nothing else (whatever
    the context before it) comes back with no transcript."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        segments = super().__call__(audio, prompt, prefix)
        start, seconds = self.session.heard_layout()[-1]
        own = [w for w in self.truth if start <= w.start < start + seconds]
        return [] if len(own) == 1 else segments


def _sentences_after_a_word(rng: random.Random, pause_s: float) -> list[Word]:
    """Four sentences of 8 words, 1.5 s apart, each opening with one short word and then a
    pause of `pause_s` ("Em ... dezembro o décimo terceiro")."""
    words, t = [], 0.3
    for i in range(32):
        if i and i % 8 == 0:
            t += 1.5
        elif i % 8 == 1:
            t += pause_s - 0.05
        d = 0.15 if i % 8 == 0 else rng.uniform(0.2, 0.4)
        words.append(Word(t, t + d, rng.choice(VOCAB), 0.9))
        t += d + 0.05
    return words


@pytest.mark.parametrize("profile", sorted(s.PROFILES))
def test_a_word_the_decoder_did_not_hear_alone_waits_for_the_next_utterance(profile):
    chosen = s.PROFILES[profile]
    rng = random.Random(3)
    # Paused long enough for a decode to hear the word alone (a step, then the endpoint).
    truth = _sentences_after_a_word(rng, chosen.step_s + chosen.endpoint_silence_s + 0.2)
    for carry in (2.0, 0.0):
        decoder = LoneWordDeafDecoder(truth, random.Random(3))
        events = _streamed(truth, decoder, profile, carry_wordless_s=carry, min_speech_s=0.1)
        if carry:
            assert final_words(events) == [w.word for w in truth]  # none lost, none twice
        else:  # the setting's reason: the lone word went to the context, never final
            assert len(final_words(events)) < len(truth)


class RetimingDecoder(ScriptedDecoder):
    """Times words across a pause (0.15 s or more in what it hears) as Whisper often does:
    `stretch_back`: the word after the pause starts 0.45 s before the word before it ends (where
    Whisper's timings lost track), and that word ends there; otherwise the word before the pause
    runs on to the next one's start."""

    def __init__(self, truth: list[Word], rng: random.Random, stretch_back: bool):
        super().__init__(truth, rng, jitter=0.0, garble_tail=False)
        self.stretch_back = stretch_back

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        segments = super().__call__(audio, prompt, prefix)
        words = [w for seg in segments for w in seg.words]
        for i in range(1, len(words)):
            before, after = words[i - 1], words[i]
            if after.start - before.end < 0.15:
                continue
            if self.stretch_back:
                end = max(before.start + 0.02, before.end - 0.45)
                words[i - 1], words[i] = replace(before, end=end), replace(after, start=end)
            else:
                words[i - 1] = replace(before, end=after.start)
        out, k = [], 0
        for seg in segments:
            own = tuple(words[k : k + len(seg.words)])
            k += len(seg.words)
            out.append(replace(seg, start=own[0].start, end=own[-1].end, words=own))
        return out


def _sentences_opening_with_a_short_word(rng: random.Random) -> list[Word]:
    """Four sentences of 8 words, 1.5 s apart, each opening with a short word and ending with a
    long one ("... seis meses | e o barulho ...")."""
    words, t = [], 0.3
    for i in range(32):
        if i and i % 8 == 0:
            t += 1.5
        d = {0: 0.12, 7: 0.55}.get(i % 8) or rng.uniform(0.2, 0.4)
        words.append(Word(t, t + d, f"{rng.choice(VOCAB)}{i}", 0.9))
        t += d + 0.05
    return words


@pytest.mark.parametrize("profile", ["accurate", "balanced"])
def test_a_first_word_timed_back_over_the_pause_is_the_buffer_s(profile):
    # A closing decode hears the context, then the buffer (0.2 s of silence before the speech):
    # the short first word, timed from where the last context word ended, has its middle in
    # the context. `straddle_s` keeps it; the middle alone dropped it as committed.
    truth = _sentences_opening_with_a_short_word(random.Random(7))
    for straddle in (0.1, 0.0):
        decoder = RetimingDecoder(truth, random.Random(7), stretch_back=True)
        events = _streamed(truth, decoder, profile, straddle_s=straddle)
        if straddle:
            assert final_words(events) == [w.word for w in truth]  # none lost, none twice
        else:
            assert len(final_words(events)) < len(truth)


@pytest.mark.parametrize("profile", ["accurate", "balanced"])
def test_the_last_context_word_timed_into_the_buffer_is_not_final_twice(profile):
    # The other way round: the context's last word runs on over the pause into the buffer. It
    # reaches `straddle_s` into it, but it is the last committed word heard again.
    truth = _sentences_opening_with_a_short_word(random.Random(8))
    decoder = RetimingDecoder(truth, random.Random(8), stretch_back=False)
    events = _streamed(truth, decoder, profile, straddle_s=0.1)
    assert final_words(events) == [w.word for w in truth]


def test_wordless_speech_is_let_go_when_no_speech_follows_it():
    # A cough VAD calls speech, no word, then only silence: it is not kept forever, and the
    # buffer does not grow with the silence after it.
    truth = [Word(0.3, 0.45, "tosse", 0.9)]
    decoder = LoneWordDeafDecoder(truth, random.Random(1))
    profile = replace(s.PROFILES["accurate"], carry_wordless_s=1.0, min_speech_s=0.1)
    session = scripted_session(truth, decoder, s.SessionOptions(profile="accurate"), profile)
    for _ in range(60):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            assert not finals(session.step())
    assert session.commit_time >= 0.45
    assert session.received_s - session.buffer_start <= 2.0


def test_wordless_noise_bursts_do_not_grow_the_buffer():
    # Bursts VAD calls speech, each alone and wordless, 0.8 s apart for 20 s: one is kept for
    # the next, not all of them.
    truth = [Word(0.3 + 0.95 * k, 0.45 + 0.95 * k, f"ruido{k}", 0.9) for k in range(21)]
    decoder = LoneWordDeafDecoder(truth, random.Random(1))
    decoder.truth = []  # nothing it hears is a word
    profile = replace(s.PROFILES["accurate"], carry_wordless_s=2.0, min_speech_s=0.1)
    session = scripted_session(truth, decoder, s.SessionOptions(profile="accurate"), profile)
    longest = 0.0
    for _ in range(220):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            assert not finals(session.step())
        longest = max(longest, session.received_s - session.buffer_start)
    assert longest < 5.0


def test_closing_decodes_go_to_the_closing_decoder_and_only_they():
    rng = random.Random(6)
    truth = script(rng, 30, pause_every=10)
    closing = ScriptedDecoder(truth, rng)
    grid, events = _run_profile(truth, rng, closing=closing)
    assert final_words(events) == [w.word for w in truth]
    assert grid.layouts and all(len(layout) == 1 for layout in grid.layouts)
    assert any(len(layout) > 1 for layout in closing.layouts)  # these heard the context


def test_a_context_decode_is_given_the_context_s_committed_words_as_its_prefix():
    truth, decoder, layouts, events = _context_run(8.0, unique=True, context_prefix=True)
    committed = [w for f in finals(events) for w in f.segment.words]
    assert [w.word for w in committed] == [w.word for w in truth]  # none twice, none lost
    with_context = [(layout, p) for layout, p in zip(layouts, decoder.prefixes) if len(layout) > 1]
    assert with_context
    for layout, prefix in with_context:
        since, buffer_start = layout[0][0], layout[-1][0]
        said = [w.word for w in committed if since <= w.start < buffer_start]
        lead = sum(seconds for _, seconds in layout[:-1])
        mark = f"<|{round(lead / 0.02) * 0.02:.2f}|>"
        assert prefix == " ".join(said) + mark + mark
    # Decodes without the context, and every decode of a profile without the flag, get none.
    assert all(p == "" for layout, p in zip(layouts, decoder.prefixes) if len(layout) == 1)
    _, plain, _, _ = _context_run(8.0, unique=True, context_prefix=False)
    assert not any(plain.prefixes)


def test_the_token_budget_leaves_room_for_prompt_and_prefix_within_whisper_s_448():
    assert s.token_budget(220, 0, 0) == 220  # nothing else: what the audio wants
    assert s.token_budget(220, 60, 50) == 220  # 3 + 61 + 51 + 220 = 335
    assert s.token_budget(300, 400, 0) == 448 - 3 - 224  # the prompt is cut to 223 tokens
    assert s.token_budget(220, 400, 120) == 448 - 3 - 224 - 121 == 100
    for prompt, prefix in [(0, 0), (223, 0), (300, 100), (223, 150)]:
        used = 3 + sum(min(n, 223) + 1 for n in (prompt, prefix) if n)
        assert used + s.token_budget(220, prompt, prefix) <= 448


def test_a_profile_s_closing_beam_is_the_closing_decoder_s():
    accurate = replace(s.PROFILES["balanced"], closing_beam_size=5)
    assert s.closing_decoder(None, "pt", accurate).beam_size == 5
    assert s.closing_decoder(None, "pt", replace(accurate, closing_beam_size=0)).beam_size == 1


def test_only_decodes_that_may_close_an_utterance_hear_the_context():
    truth, _, layouts, _ = _context_run(context_s=4.0)
    speculate = s.PROFILES["balanced"].speculate_silence_s
    with_context = [max(layout) for layout in layouts if len(layout) > 1]
    without = [max(layout) for layout in layouts if len(layout) == 1]
    assert with_context and without
    for start, seconds in with_context:
        end = start + seconds
        spoken = [w for w in truth if w.start < end]
        # Speech had stopped (or the stream ended) when it ran.
        assert end - spoken[-1].end >= speculate - 0.1 or end >= truth[-1].end


class UnsureDecoder(ScriptedDecoder):
    """Hears the words' times right but their text wrong ("errado"), and says it is unsure
    (`avg_logprob` -1.5): greedy decoding gone astray on a hard phrase."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        return [
            replace(
                seg,
                avg_logprob=-1.5,
                words=tuple(replace(w, word="errado") for w in seg.words),
            )
            for seg in super().__call__(audio, prompt, prefix)
        ]


def _doubt_run(
    closing, doubt, threshold: float | None = -0.8, seed: int = 6, mid_pause_s: float = 0.0
):
    """Three utterances streamed with `closing` for the closing decodes and `doubt` to decode
    a doubtful one again; the grid decoder plain. `mid_pause_s`: a pause that long in the
    middle of each utterance (with the gap between words, longer than the speculation silence
    and shorter than the endpoint silence, which the caller sets to 0.5 s here)."""
    rng = random.Random(seed)
    truth = script(rng, 30, pause_every=10)
    if mid_pause_s:
        truth = [
            replace(w, start=w.start + shift, end=w.end + shift)
            for i, w in enumerate(truth)
            for shift in [mid_pause_s * ((i + 5) // 10)]
        ]
    grid = ScriptedDecoder(truth, rng)
    profile = replace(s.PROFILES["balanced"], doubt_logprob=threshold)
    decoders = {"closing": closing(truth), "doubt": doubt(truth)}
    options = s.SessionOptions(profile="balanced", endpoint_silence_s=0.5)
    session = scripted_session(truth, grid, options, profile=profile, **decoders)
    events = []
    for _ in range(int((truth[-1].end + 2) / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            events.extend(session.step())
    events += session.finish()
    return truth, session, grid, decoders, events


def test_a_doubtful_closing_decode_is_decoded_again_and_the_second_transcript_kept():
    truth, session, grid, d, events = _doubt_run(
        lambda t: UnsureDecoder(t, random.Random(1), garble_tail=False),
        lambda t: ScriptedDecoder(t, random.Random(2), garble_tail=False),
    )
    assert final_words(events) == [w.word for w in truth]  # each word once, none "errado"
    # Each utterance: the speculative closing decode heard it whole but was unsure, so at the
    # endpoint the doubt decoder decodes it again (and the greedy closing decode is not run
    # a second time).
    assert d["doubt"].calls == d["closing"].calls == session.counters.redecodes == 3
    # The second decode hears what the first heard (the context too) and the silence since,
    # without the prompt.
    for first, again in zip(d["closing"].layouts, d["doubt"].layouts):
        assert again[:-1] == first[:-1] and again[-1][0] == first[-1][0]
        assert again[-1][1] > first[-1][1]
    assert any(len(layout) > 1 for layout in d["doubt"].layouts)
    assert set(d["doubt"].prompts) == {""}
    assert grid.calls and "errado" not in " ".join(f.segment.text for f in finals(events))


def test_only_an_utterance_s_end_waits_for_a_redecode_not_a_pause_inside_it():
    truth, session, _, d, events = _doubt_run(
        lambda t: UnsureDecoder(t, random.Random(1), garble_tail=False),
        lambda t: ScriptedDecoder(t, random.Random(2), garble_tail=False),
        mid_pause_s=0.15,
    )
    assert final_words(events) == [w.word for w in truth]
    endpoint_s = session.options.endpoint_silence_s
    ends = [start + seconds for start, seconds in (layout[-1] for layout in d["doubt"].layouts)]
    for end in ends:  # each ran once its utterance had ended (or the stream had)
        spoken = [w for w in truth if w.start < end]
        assert end - spoken[-1].end >= endpoint_s - 0.1 or end >= truth[-1].end
    # The closing decodes at the pauses inside utterances were unsure too, and not redone.
    assert d["closing"].calls > d["doubt"].calls == session.counters.redecodes == 3


def test_a_confident_closing_decode_is_kept_and_a_profile_without_doubt_never_redecodes():
    truth, session, _, d, events = _doubt_run(
        lambda t: ScriptedDecoder(t, random.Random(1), garble_tail=False),
        lambda t: UnsureDecoder(t, random.Random(2)),
    )
    assert final_words(events) == [w.word for w in truth]
    assert d["doubt"].calls == session.counters.redecodes == 0 < d["closing"].calls
    truth, session, _, d, events = _doubt_run(
        lambda t: UnsureDecoder(t, random.Random(1), garble_tail=False),
        lambda t: ScriptedDecoder(t, random.Random(2)),
        threshold=None,
    )
    assert d["doubt"].calls == session.counters.redecodes == 0
    assert set(final_words(events)) == {"errado"}  # the closing decodes' words, as they were


def test_a_redecode_that_loops_does_not_replace_a_transcript_that_did_not():
    truth, session, _, d, events = _doubt_run(
        lambda t: ScriptedDecoder(t, random.Random(1), garble_tail=False),
        lambda t: LoopingDecoder(t, random.Random(2), garble_tail=False),
        threshold=-0.1,  # the scripted decoder's -0.2 is doubtful
    )
    assert d["doubt"].calls == session.counters.redecodes > 0
    assert final_words(events) == [w.word for w in truth]


def test_a_profile_s_doubt_decoder_has_its_beam_and_none_without_a_threshold():
    balanced = s.PROFILES["balanced"]
    assert s.doubt_decoder(None, "pt", balanced) is None
    doubt = s.doubt_decoder(None, "pt", replace(balanced, doubt_logprob=-0.8))
    assert doubt is not None and doubt.beam_size == 5
    assert doubt.context_pad_s == balanced.context_pad_s


def _stream_end_run(tail_s: float, seed: int = 3):
    """Two utterances, the stream closed `tail_s` after the last word; a separate closing
    decoder (the decodes that hear the context). Returns the truth, the events, how many
    decodes (grid and closing) ran before `finish` and in all, and the closing decoder."""
    rng = random.Random(seed)
    truth = script(rng, 16, pause_every=8)
    grid, closing = ScriptedDecoder(truth, rng), ScriptedDecoder(truth, random.Random(9))
    session = scripted_session(truth, grid, closing=closing)
    events = []
    for _ in range(int(round((truth[-1].end + tail_s) / 0.05))):
        session.push(np.zeros(800, dtype=np.int16))
        if session.due():
            events.extend(session.step())
    before = closing.calls + grid.calls
    events += session.finish()
    return truth, events, before, closing.calls + grid.calls, closing


def test_a_stream_closed_after_the_decode_that_heard_its_last_phrase_needs_no_decode():
    """The speaker stops, the decode that hears the whole phrase runs (`speculate_silence_s`)
    and the stream closes before the endpoint silence: `finish` commits from that decode
    instead of decoding the same speech again."""
    profile = s.PROFILES["balanced"]
    tail = (profile.speculate_silence_s + profile.endpoint_silence_s) / 2 + 0.1
    truth, events, before, after, closing = _stream_end_run(tail)
    assert final_words(events) == [w.word for w in truth]
    assert after == before  # no decode in finish
    assert finals(events)[-1].end_of_utterance
    # The last phrase's words came from a decode that heard the context.
    assert len(closing.layouts[-1]) > 1


def test_a_stream_closed_mid_phrase_or_before_its_end_was_heard_is_decoded_at_finish():
    for tail in (0.0, 0.1):  # still speaking / the speculation silence not reached
        truth, events, before, after, _ = _stream_end_run(tail)
        assert after == before + 1, tail
        spoken = [w.word for w in truth]
        got = final_words(events)
        assert got[:-1] == spoken[:-1] and got[-1].startswith(spoken[-1][:1]), tail


def test_only_beam_search_closing_decodes_run_on_the_beam_instance():
    """The service's second model instance (`stream_beam_threads`) takes beam searches only:
    `accurate`'s closing decodes; `balanced`'s greedy ones stay on the shared instance."""
    shared, beams = object(), object()
    accurate, balanced = s.PROFILES["accurate"], s.PROFILES["balanced"]
    assert accurate.searches_beams and not balanced.searches_beams
    assert s.closing_decoder(shared, "pt", accurate, beams).model is beams
    assert s.closing_decoder(shared, "pt", accurate).model is shared
    assert s.closing_decoder(shared, "pt", balanced, beams).model is shared
    assert s.closing_decoder(shared, "pt", accurate, beams).beam_size == 5


def _unsure(segments: list[Segment], word: str | None = None, p: float = 0.3) -> list[Segment]:
    """The segments with every word's probability `p` (and text `word`, if given)."""
    return [
        replace(
            seg,
            words=tuple(replace(w, word=word or w.word, probability=p) for w in seg.words),
        )
        for seg in segments
    ]


class ContextDecoder(ScriptedDecoder):
    """A scripted closing decoder that records the seconds of context each decode heard."""

    def __init__(self, truth, jitter: float = 0.05):
        super().__init__(truth, random.Random(1), jitter=jitter, garble_tail=False)
        self.contexts: list[float] = []

    def heard(self, audio: np.ndarray, prompt: str, prefix: str) -> tuple[float, list[Segment]]:
        """The context this decode heard (recorded) and the scripted segments."""
        layout = self.session.heard_layout()
        context = sum(seconds for _, seconds in layout[:-1])
        self.contexts.append(context)
        return context, ScriptedDecoder.__call__(self, audio, prompt, prefix)


class PairDecoder(ContextDecoder):
    """A closing decoder whose transcript depends on the context it heard: `full` changes the
    segments of a decode after more than 4.5 s of context, `second` those of a decode after
    exactly 4 s (`second_context_s`'s decode); others are left as heard. With `barrier`, both
    decodes of a pair wait for each other (they must run at once). Records each context."""

    def __init__(self, truth, full=None, second=None, barrier=None):
        super().__init__(truth)
        self.full, self.second, self.barrier = full, second, barrier

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        context, segments = self.heard(audio, prompt, prefix)
        is_second, is_full = abs(context - 4.0) < 1e-6, context > 4.5
        if self.barrier is not None and (is_second or is_full):
            self.barrier.wait()
        change = self.second if is_second else self.full if is_full else None
        return change(segments) if change else segments


def _second_context_run(closing_of, second_context_s: float = 4.0, seed: int = 5):
    """Three utterances of 10 words (the third's closing decodes hear ~7 s of context) with a
    closing decoder made by `closing_of(truth)`; `balanced` with `second_context_s`."""
    rng = random.Random(seed)
    truth = script(rng, 30, pause_every=10)
    grid = ScriptedDecoder(truth, rng, garble_tail=False)
    closing = closing_of(truth)
    profile = replace(s.PROFILES["balanced"], second_context_s=second_context_s)
    session = scripted_session(truth, grid, profile=profile, closing=closing)
    return truth, session, closing, _stream_through(session, truth)


def test_a_closing_decode_after_a_shorter_context_is_kept_when_it_is_surer():
    """The decode after the full context goes astray (unsure), the one after its last 4 s does
    not: the finals are the surer transcript's, each word once."""
    barrier = threading.Barrier(2, timeout=10)
    truth, session, closing, events = _second_context_run(
        lambda t: PairDecoder(t, full=lambda segs: _unsure(segs, "errado"), barrier=barrier)
    )
    assert final_words(events) == [w.word for w in truth]
    c = session.counters
    assert c.second_decodes > 0 and c.second_kept == c.second_decodes
    # Every closing decode with more than 4.5 s of context ran again after its last 4 s, at the
    # same time (the barrier above would have timed out otherwise).
    long = [x for x in closing.contexts if x > 4.5]
    short = [x for x in closing.contexts if 0 < x <= 4.5]
    assert len(long) == c.second_decodes and all(abs(x - 4.0) < 1e-6 for x in short[-len(long) :])
    assert not barrier.broken


def test_the_full_context_s_transcript_is_kept_when_it_is_the_surer_one():
    """Reversed: the shorter context's decode is the unsure one; the full context's is kept."""
    truth, session, _, events = _second_context_run(
        lambda t: PairDecoder(t, second=lambda segs: _unsure(segs, "errado"))
    )
    assert final_words(events) == [w.word for w in truth]
    assert session.counters.second_decodes > 0 and session.counters.second_kept == 0


def test_a_looping_second_decode_never_wins_and_without_the_option_none_runs():
    def loops(segments):
        return [replace(seg, compression_ratio=3.0) for seg in segments]

    truth, session, _, events = _second_context_run(
        lambda t: PairDecoder(t, full=lambda segs: _unsure(segs, p=0.01), second=loops)
    )
    assert final_words(events) == [w.word for w in truth]  # unsure, but not a loop
    assert session.counters.second_decodes > 0 and session.counters.second_kept == 0
    assert session.counters.removed == 0  # the loop was the transcript not kept: nothing removed
    truth, session, closing, events = _second_context_run(PairDecoder, second_context_s=0)
    assert final_words(events) == [w.word for w in truth]
    assert session.counters.second_decodes == 0
    assert not [x for x in closing.contexts if abs(x - 4.0) < 1e-6]


def test_confidence_ranks_loops_then_silence_then_transcripts_by_mean_log_probability():
    sure = [Word(0, 1, "sim", 0.9), Word(1, 2, "claro", 0.8)]
    unsure = [Word(0, 1, "sim", 0.9), Word(1, 2, "errado", 0.05)]
    assert s.confidence(sure) > s.confidence(unsure) > s.confidence([]) > s.confidence(sure, True)
    assert s.confidence(sure) == pytest.approx((np.log(0.9) + np.log(0.8)) / 2)
    assert s.confidence([Word(0, 1, "x", 0.0)]) > s.confidence([])  # a floor, not -inf


def test_a_context_s_tail_is_its_last_seconds_cut_inside_a_piece():
    pieces = [
        (1.0, np.ones(2 * SAMPLE_RATE, np.float32)),
        (5.0, np.ones(3 * SAMPLE_RATE, np.float32)),
    ]
    tail = s._tail(pieces, 4.0)
    assert [(at, p.size / SAMPLE_RATE) for at, p in tail] == [(2.0, 1.0), (5.0, 3.0)]
    assert [(at, p.size) for at, p in s._tail(pieces, 10.0)] == [(at, p.size) for at, p in pieces]
    assert s._tail(pieces, 0.0) == []


def test_accurate_decodes_twice_at_once_and_the_service_gives_it_the_workers():
    from asr_mesh.services.transcription.server import TranscriptionSettings, stream_beam_workers

    assert s.PROFILES["accurate"].second_context_s == 4.0
    assert s.PROFILES["accurate"].decodes_at_once == 2
    assert s.PROFILES["balanced"].decodes_at_once == 1
    assert stream_beam_workers(TranscriptionSettings(max_streams=3)) == 6


def test_a_step_s_span_says_what_each_decode_of_a_pair_heard_and_which_was_kept(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(s, "tracer", provider.get_tracer("test"))
    _, session, _, _ = _second_context_run(
        lambda t: PairDecoder(t, full=lambda segs: _unsure(segs, "errado"))
    )
    pairs = [
        span.attributes
        for span in exporter.get_finished_spans()
        if "asr.stream.second_context_s" in span.attributes
    ]
    assert len(pairs) == session.counters.second_decodes > 0
    for attributes in pairs:
        assert attributes["asr.stream.second_context_s"] == pytest.approx(4.0)
        assert attributes["asr.stream.context_s"] > 4.5  # the full context, not the second's
        assert attributes["asr.stream.second_context_kept"] is True


class BabbleDecoder(ScriptedDecoder):
    """Hears the script, but as whisper base does under babble: every segment looks silent to
    Whisper's no-speech rule (no-speech probability 0.8, mean log-probability -1.3)."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        heard = super().__call__(audio, prompt, prefix)
        return [replace(seg, no_speech_prob=0.8, avg_logprob=-1.3) for seg in heard]


@pytest.mark.parametrize("profile", ["accurate", "balanced"])
def test_speech_whisper_calls_silent_is_final_when_only_the_vad_decides(profile):
    truth = script(random.Random(5), 20, pause_every=10)
    trusting = _streamed(
        truth, BabbleDecoder(truth, random.Random(5)), profile, no_speech_skip=False
    )
    assert final_words(trusting) == [w.word for w in truth]
    skipping = _streamed(truth, BabbleDecoder(truth, random.Random(5)), profile)
    assert final_words(skipping) == []


def test_a_profile_without_the_no_speech_skip_gives_its_decoders_no_threshold():
    for skip, threshold in ((True, guards.NO_SPEECH_THRESHOLD), (False, None)):
        profile = replace(s.PROFILES["accurate"], no_speech_skip=skip, doubt_logprob=-0.8)
        decoders = (
            s.grid_decoder(object(), "pt", profile),
            s.closing_decoder(object(), "pt", profile),
            s.doubt_decoder(object(), "pt", profile),
        )
        assert [d.no_speech_threshold for d in decoders] == [threshold] * 3
    # The rescue decode keeps batch's settings, no-speech rule included.
    assert s.rescue_decoder(object(), "pt").no_speech_threshold == guards.NO_SPEECH_THRESHOLD


class DeafDecoder(ScriptedDecoder):
    """Hears nothing at all, as Whisper under loud babble can for a long stretch."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        super().__call__(audio, prompt, prefix)
        return []


@pytest.mark.parametrize("profile", ["accurate", "balanced", "low_latency"])
def test_speech_that_never_gives_a_word_does_not_grow_the_buffer_without_bound(profile):
    # 70 s of speech VAD hears and Whisper does not: the buffer is cut back once it holds
    # Whisper's 30 s window, and no final is invented.
    truth = script(random.Random(3), 200)
    assert truth[-1].end > 60
    decoder = DeafDecoder(truth, random.Random(3))
    session = scripted_session(truth, decoder, s.SessionOptions(profile=profile))
    longest = 0.0
    for _ in range(int(truth[-1].end / 0.1)):
        session.push(np.zeros(1600, dtype=np.int16))
        if session.due():
            assert not finals(session.step())
        longest = max(longest, session.received_s - session.buffer_start)
    assert 30.0 <= longest <= 30.0 + 2 * session.profile.step_s
    assert session.received_s - session.buffer_start < 30.0


class ContextErrorsDecoder(ContextDecoder):
    """A closing decoder that mishears a different quarter of the words after each context, as
    surely as it hears the rest: the words of truth index i are misheard when i % 4 is
    `errors[c]` for the context c it heard (0, 2 and 4 s within 0.05 s; any other length is
    the full context, key None). Records each context."""

    def __init__(self, truth, errors: dict[float | None, int]):
        super().__init__(truth, jitter=0.0)
        self.errors = errors

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        context, segments = self.heard(audio, prompt, prefix)
        layout = self.layouts[-1]
        heard = [
            i
            for start, seconds in layout
            for i, w in enumerate(self.truth)
            if start - 1e-6 <= w.start < start + seconds
        ]
        key = next((c for c in self.errors if c is not None and abs(c - context) < 0.05), None)
        quarter = self.errors[key]
        words = [w for seg in segments for w in seg.words]
        assert len(words) == len(heard)
        said = [
            replace(w, word="errado") if i % 4 == quarter else w
            for w, i in zip(words, heard, strict=True)
        ]
        out, k = [], 0
        for seg in segments:
            out.append(replace(seg, words=tuple(said[k : k + len(seg.words)])))
            k += len(seg.words)
        return out


def _rover_run(rover_contexts_s: tuple[float, ...]):
    """Three utterances of 10 words (the second's closing decodes hear ~3.5 s of context, the
    third's ~7 s), `balanced` with a second context of 4 s and `rover_contexts_s`; after the
    full context the closing decoder mishears quarter 0 of the words, after 4 s quarter 1,
    after none quarter 2, after 2 s quarter 3."""
    rng = random.Random(5)
    truth = script(rng, 30, pause_every=10)
    grid = ScriptedDecoder(truth, rng, garble_tail=False)
    closing = ContextErrorsDecoder(truth, {None: 0, 4.0: 1, 0.0: 2, 2.0: 3})
    profile = replace(
        s.PROFILES["balanced"], second_context_s=4.0, rover_contexts_s=rover_contexts_s
    )
    session = scripted_session(truth, grid, profile=profile, closing=closing)
    return truth, session, closing, _stream_through(session, truth)


def test_closing_decodes_after_several_contexts_are_combined_word_by_word():
    """Each decode mishears other words; combined, every word the decodes mostly heard right is
    right, each word once. The first utterance has no context: its one decode's errors stay."""
    truth, session, closing, events = _rover_run((0.0, 2.0))
    said = final_words(events)
    expected = [w.word for w in truth]
    assert len(said) == len(expected)
    assert said[10:] == expected[10:]
    assert [i for i, w in enumerate(said[:10]) if w == "errado"] == [
        i for i in range(10) if i % 4 == 2 and expected[i] != "errado"
    ]
    # The third utterance's closing decodes: the full context (~7 s), 4 s, none and 2 s, at once;
    # the second's: its full context (~3.5 s: the 4 s tail is the same decode, run once), none, 2 s.
    assert session.counters.second_decodes > 0
    heard = sorted(round(c, 1) for c in closing.contexts)
    assert heard.count(4.0) >= 1 and heard.count(2.0) >= 2 and heard.count(0.0) >= 3


def test_without_the_combination_a_pair_keeps_one_transcript_and_its_errors():
    truth, session, _, events = _rover_run(())
    said = final_words(events)
    assert len(said) == len(truth)
    assert said[10:].count("errado") >= 4  # one decode's quarter, whichever was kept


def test_a_replica_turns_the_combination_on_for_accurate_only_and_sizes_its_workers():
    from asr_mesh.services.transcription.server import TranscriptionSettings, stream_beam_workers

    accurate = s.with_rover(s.PROFILES["accurate"], (0.0, 2.0, 6.0, 12.0))
    assert accurate.rover_contexts_s == (0.0, 2.0, 6.0, 12.0)
    assert accurate.decodes_at_once == 6 and accurate.context_kept_s == 12.0
    assert s.with_rover(s.PROFILES["balanced"], (0.0, 2.0)) == s.PROFILES["balanced"]
    assert s.with_rover(s.PROFILES["accurate"], ()) == s.PROFILES["accurate"]
    settings = TranscriptionSettings(max_streams=3, stream_rover_contexts=(0.0, 2.0))
    assert stream_beam_workers(settings) == 12
    assert stream_beam_workers(TranscriptionSettings(max_streams=3)) == 6


def test_every_session_s_side_decodes_run_at_once_not_queued_behind_each_other():
    """Four sessions closing at the same moment with six decodes each: the twenty run beside
    the sessions' own decodes all wait on the model at once (a fixed 8 threads queued them)."""
    from asr_mesh.services.transcription.server import TranscriptionSettings, stream_beam_workers

    settings = TranscriptionSettings(max_streams=4, stream_rover_contexts=(0.0, 2.0, 6.0, 12.0))
    beside = stream_beam_workers(settings) - settings.max_streams  # each session runs one itself
    assert beside == 20
    together = threading.Barrier(beside, timeout=20)
    waits = [s._side_pool().submit(together.wait) for _ in range(beside)]
    assert sorted(w.result() for w in waits) == list(range(beside))
