"""Real-time recognition: interim and final results while the audio is still arriving.

Pure: no gRPC, no environment reads. The servicer feeds audio through an `Inbox` and forwards
the events `drive` yields.

How a session works (the approach of whisper_streaming, Machácek et al. 2023, and of
Google/Riva's StreamingRecognize semantics for the results):

- The audio of the current utterance is kept in a **bounded buffer** and decoded again from its
  start every `step_s` of new audio (a *hypothesis*: words with absolute timestamps).
- **LocalAgreement-n** (n=2 by default): the longest prefix on which the last n hypotheses
  agree (word by word, ignoring case and punctuation) is **committed** and sent once as a final
  result; the rest is the interim result, which may still change.
- **Endpointing**: when voice activity detection (silero, shipped with faster-whisper) hears
  `endpoint_silence_s` of silence after speech, the utterance is decoded one last time and all
  of it is committed (`end_of_utterance`). The buffer then restarts at the end of the speech.
- **Speculative decode**: when VAD hears the speech stop for `speculate_silence_s` (shorter
  than the endpoint silence) and the last decode did not hear its end, a decode runs at once;
  a grid step due in that moment waits for it. If the silence reaches the endpoint, the
  utterance is committed from that decode, so no decode is left to run after the endpoint;
  likewise if the stream ends first (`finish` decodes only speech no closing decode heard).
- **Short encoder context**: Whisper's encoder hears the buffer plus `context_pad_s` of
  silence instead of its padded 30 s window (`short_context`), which is most of a decode's cost.
- Committed text **outside** the buffer is the decoder's **prompt**, so the model keeps context
  across trims.
- The buffer is **trimmed** at the end of a committed segment once it is longer than
  `window_s`; past `max_buffer_s` the oldest words are committed even without agreement, so
  the buffer (and the cost of a decode) stays bounded. A buffer that gives no word at all
  (babble VAD calls speech) is cut back once it holds Whisper's 30 s window
  (`WORDLESS_BOUND_SAMPLES`).
- **No word twice, none lost**: a hypothesis re-decodes committed audio, so its words are
  filtered against the commit point (by time, then by matching the committed tail word by
  word), and audio is only dropped behind the commit point. Every word ends up in exactly one
  final result.
- **Guards**, as in batch (`guards`): no decode when VAD hears no speech (silence and noise
  produce nothing), segments the model itself calls silence are dropped, repetitive
  (failed) hypotheses are ignored, and phrase loops are cut from committed text.
"""

from __future__ import annotations

import contextvars
import difflib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from opentelemetry import trace

from asr_mesh.services.common.domain import SAMPLE_RATE, Segment, Word, word_key
from asr_mesh.services.common.domain_errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    UploadStalled,
)
from asr_mesh.services.transcription import guards, rover

tracer = trace.get_tracer(__name__)

# -- latency profiles ------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyProfile:
    """One documented set of streaming parameters.

    - `step_s`: new audio between two decodes (how often interim results can change, and the
      grain of agreement commits).
    - `window_s`: once the buffer is longer, it is trimmed at the end of a committed segment.
    - `max_buffer_s`: hard bound on the buffer; beyond it the oldest words are committed (a
      buffer with no word: at 30 s, `WORDLESS_BOUND_SAMPLES`).
    - `beam_size`: Whisper beam (1 = greedy).
    - `agreement`: how many successive hypotheses must agree on a prefix to commit it
      (LocalAgreement-n).
    - `endpoint_silence_s`: silence that ends an utterance (unless the caller sets its own).
    - `min_speech_s`: shortest stretch VAD counts as speech (clicks and coughs are ignored).
    - `speculate_silence_s`: silence after speech at which a decode runs at once, without
      waiting for the next step, when the last decode did not hear that speech's end (0 =
      never). If the silence goes on to the endpoint, the utterance is committed from this
      decode, so the closing final needs no decode after the endpoint silence; if speech goes
      on, it was an ordinary step, a little early (the next one counts from it).
    - `context_pad_s`: the encoder hears the buffer plus this much silence instead of
      Whisper's full 30 s window (0 = the full window, as batch). See `short_context`.
    - `context_s`: seconds of earlier speech (already committed, silences between phrases
      removed) the decoder hears before the buffer (0 = none). Whisper base mishears a short
      phrase heard alone far more than the same phrase after a few seconds of the same
      conversation (batch decodes 30 s windows); the words it hears in this context are
      dropped, only the buffer's are used. Only decodes that may close an utterance hear it
      (speech stopped `speculate_silence_s` ago, the endpoint, the end of the stream): it
      makes a decode several times dearer, and the others only feed interim results.
    - `agree_after_s`: agreement commits finals only once the buffer is longer than this
      (0 = always); before, an utterance's words become final at its endpoint, from the decode
      that hears the context.
    - `context_prompt`: whether a decode that hears the context also gets the committed text
      said before it as prompt (the caller's `initial_prompt` always). Without it, a misheard
      word is not copied into the next phrase, but more decodes loop or stop at the context.
    - `closing_beam_size`: Whisper beam of the decodes that may close an utterance (those that
      hear the context: their words become final); 0 = `beam_size`. The other decodes only
      feed interim results (and agreement on long phrases), greedy is enough for them.
    - `context_prefix`: a decode that hears the context is given the words committed from it
      as the start of its transcript (Whisper's prefix, closed by timestamp tokens where the
      buffer starts), so it does not transcribe the context again (CTranslate2 still steps
      through the prefix's tokens, forced). Off in every profile: it did not hold held out.
    - `doubt_logprob`: when an utterance ends (its endpoint, or the end of the stream) and
      the decode its finals would come from is doubtful (its own segments' mean
      `avg_logprob` below this, no segment of its own, or a loop), the utterance is decoded
      once more with beam `doubt_beam_size`, without the committed text as prompt, and that
      transcript is used (unless it loops and the first did not). None = never. Beam search
      is dearer by the token; the idea is to spend it only where the cheap decode is unsure.
      Speculative decodes at a pause are not redone (the speech may go on). Off in every
      profile: on tune it landed between `balanced` and `accurate` on both latency and WER
      (benchmarks/README.md).
    - `second_context_s`: a closing decode (one that hears the context) runs twice at once,
      the second time after only the last `second_context_s` seconds of the context (0 = once
      only). Of the two transcripts, the one whose own words (those of the buffer) have the
      higher mean log-probability is kept (`confidence`); a looping one never wins. The two
      decodes fail differently (the longer context more often carries a misheard name over or
      stops at the context's end, the shorter one mishears more short phrases), and Whisper's
      word probabilities tell which went astray. It costs a second decode's CPU, at the same
      time as the first (on CPU the service gives each session two workers of its beam
      instance), so a session alone waits for the longer of the two.
    - `rover_contexts_s`: more closing decodes at once, each after only the last that many
      seconds of the session's committed speech (0: the buffer alone, without the committed
      text as prompt when `context_prompt` is off); with them, the transcripts of all the
      closing decodes (`context_s`, `second_context_s` and these) are combined word by word
      (`rover.combine`, `ROVER_SETTINGS`) instead of the surer one kept. Decodes of one phrase
      heard after different contexts go astray on different words, and most of them get
      each word right. It won per utterance, but replayed as a stream it was within the noise
      (better on clean conversations, worse on noisy ones), and it costs a decode's CPU for
      each context: on the 2 cores of this machine they queue and the closing final waits for
      all of them. So no profile has them; a replica with the cores (or a GPU) to run them at
      once can try them for `accurate` (`TranscriptionSettings.stream_rover_contexts`).
      Measured in benchmarks/README.md ("Combining closing decodes word by word").
    - `lead_silence_s`: when new speech starts after what is committed, the silence before it
      is cut from the buffer down to this much (0 = kept whole). After an utterance closes, the
      buffer starts where its last word ended, so the next one's decodes heard the pause first
      (up to a second or more), and Whisper often calls audio that opens with silence no speech:
      faster-whisper then drops the whole window (no-speech probability above 0.6 and mean
      log-probability below -1), and the utterance got no final at all.
    - `count_onsets`: speech that has just begun again at the end of the audio received ends
      the pause before it, however short it is so far (False: the pause runs on until the new
      speech lasts `min_speech_s`). Silero shows new speech only once ~0.1 s of it is heard,
      and a range shorter than `min_speech_s` is taken for a click, so without this a short
      pause between two words goes on counting after the next word has begun, and a 0.3 s
      endpoint can cut a sentence at a breath. Off in every profile: on tune
      it did not help (see `PROFILES`).
    - `carry_wordless_s`: when an utterance ends (its endpoint) and its closing decode gives
      no word for it although VAD heard speech, that speech is kept in the buffer for the next
      utterance, for up to this many seconds of silence after it (0 = dropped at the endpoint,
      as before); if the next utterance gives no word either, both go. A short word followed
      by a pause ("Em ... dezembro", "O ... pronto-socorro") is an utterance of its own at a
      short endpoint, and Whisper often hears nothing in a lone short word; its audio then
      went to the context, and every later decode dropped it as a word already committed.
    - `straddle_s`: a word of a decode that heard the context whose middle falls in the context
      but which ends at least this far into the buffer is the buffer's (0 = the middle decides
      alone) when the word before it is the last committed word. Whisper's word timings start a
      word where the word before it ended, so a short first word after a pause ("meses | e o
      barulho") is stretched back over the pause, which the context leaves out, and its
      middle fell before the buffer: it was dropped as a word already committed.
    - `no_speech_skip`: Whisper's no-speech rule applies to the session's decodes (a window
      whose no-speech probability is over 0.6 while its mean log-probability is under -1 gives
      no words, inside faster-whisper and in `guards.is_silent`). Off: the session's VAD alone
      decides what is speech. Under babble Whisper's no-speech probability is ~0.8 on real
      speech, and with a short encoder context the whole buffer is one window: every decode
      of it gave nothing, the buffer grew past `max_buffer_s`, and 30 s of speech got no final.
    """

    name: str
    step_s: float
    window_s: float
    max_buffer_s: float
    beam_size: int
    agreement: int
    endpoint_silence_s: float
    min_speech_s: float = 0.2
    speculate_silence_s: float = 0.0
    context_pad_s: float = 0.0
    context_s: float = 0.0
    agree_after_s: float = 0.0
    context_prompt: bool = True
    closing_beam_size: int = 0
    context_prefix: bool = False
    doubt_logprob: float | None = None
    doubt_beam_size: int = 5
    second_context_s: float = 0.0
    rover_contexts_s: tuple[float, ...] = ()
    lead_silence_s: float = 0.0
    count_onsets: bool = False
    carry_wordless_s: float = 0.0
    straddle_s: float = 0.0
    no_speech_skip: bool = True

    @property
    def searches_beams(self) -> bool:
        """Whether any of a session's planned decodes is a beam search (the rescue of a
        looping decode aside): the service runs those on their own model instance on CPU."""
        doubt = self.doubt_beam_size if self.doubt_logprob is not None else 1
        return max(self.beam_size, self.closing_beam_size, doubt) > 1

    @property
    def decodes_at_once(self) -> int:
        """Most decodes one session runs at the same time (2 with `second_context_s`, one
        more for each of `rover_contexts_s`)."""
        return 1 + (self.second_context_s > 0) + len(self.rover_contexts_s)

    @property
    def context_kept_s(self) -> float:
        """Seconds of committed speech a session keeps for its closing decodes to hear."""
        return max((self.context_s, *self.rover_contexts_s)) if self.context_s > 0 else 0.0


PROFILES = {
    "low_latency": LatencyProfile(
        "low_latency",
        step_s=1.0,
        window_s=6.0,
        max_buffer_s=12.0,
        beam_size=1,
        agreement=2,
        endpoint_silence_s=0.3,
        speculate_silence_s=0.15,
        context_pad_s=1.0,
        lead_silence_s=0.2,
    ),
    "balanced": LatencyProfile(
        "balanced",
        step_s=1.0,
        window_s=8.0,
        max_buffer_s=15.0,
        beam_size=1,
        agreement=2,
        endpoint_silence_s=0.5,
        speculate_silence_s=0.2,
        context_pad_s=1.0,
        lead_silence_s=0.2,
        context_s=8.0,
        agree_after_s=8.0,
    ),
    "accurate": LatencyProfile(
        "accurate",
        step_s=1.0,
        window_s=8.0,
        max_buffer_s=15.0,
        beam_size=1,
        agreement=2,
        endpoint_silence_s=0.3,
        speculate_silence_s=0.2,
        context_pad_s=1.0,
        lead_silence_s=0.2,
        context_s=8.0,
        agree_after_s=8.0,
        context_prompt=False,
        closing_beam_size=5,
        second_context_s=4.0,
        carry_wordless_s=2.0,
    ),
}
"""Why these values (chosen on the `tune` split of build/corpus-validate, whisper base, 2 CPU
cores; `benchmarks/bench_streaming.py --simulate --split tune`; figures on the held-out
`validate` split in benchmarks/README.md):

- Where the time went before (balanced, tune_00, one-core decode-cost clock): p50 4.2 s from a
  phrase's last word to its final = the endpoint silence (0.5 s) + ~1 s waiting for a decode
  already running when the phrase ended + a 2.6 s decode after the endpoint (90% of closing
  finals needed one), because every decode ran Whisper's encoder over a padded 30 s window
  (~2 CPU-s whatever the buffer held).
- `context_pad_s` 1 s (`short_context`): a decode of a 4 s buffer costs ~0.5 CPU-s instead of
  ~2.3; the finals' WER on the tune files did not get worse (it got better: 51% vs 59% on
  tune_00, the full window's padding is where whisper base invents most).
- `speculate_silence_s` 0.2 s: the decode that hears the whole phrase starts 0.2 s after the
  speech stops instead of after the endpoint silence, so about half of the closing finals come
  from it with no decode after the endpoint; a step due in that 0.2 s waits for it.
  Closing-final p50 on tune_00 4.15 → 1.55 s (same clock); tune_00/07/10 pooled 1.55 s.
  Step 1.5 s instead of 1 s was worse (1.85 s): the speculative decode then more often has to
  wait for a long grid decode, the buffers being longer.
- `window_s`/`max_buffer_s` 8/15 s (6/12, 12/20): decode cost grows with the buffer (13 s:
  ~1.6 CPU-s), and in overlapping speech (backchannels) no endpoint comes to restart it.
- `step_s` 1 s for low_latency too (was 0.5 s): at ~0.5 CPU-s a decode, a 0.5 s step keeps a
  core busy, so a phrase's end usually finds a decode running; low_latency differs by its
  shorter endpoint (0.3 s) and speculation (0.15 s) silences (tune_00/01: closing-final p50
  1.17 s).
- `balanced` = `low_latency`'s step and speculation with a 0.5 s endpoint, 8/15 s buffer, plus
  `context_s` 8 s + `agree_after_s` 8 s (chosen on tune through the mesh, below). Where the
  finals' WER goes
  (tune split, all 11 conversations, 802 s; scripts in benchmarks/README.md): decoding each VAD
  utterance alone, even with batch settings (30 s window, beam 5, temperature fallback), scores
  like the streaming finals (54.5% and 50.9% greedy vs 51.1% streamed), far from plain
  faster-whisper on the whole file (39.9%): whisper base mishears a phrase heard alone. The
  same utterances decoded after the ~10 s of speech before them (pauses removed) score 44.3%
  (5 s: 49.9%, 15 s: 48.8%, pauses kept: 49.6%). Streamed with 8 s of
  context on the closing decodes: finals' WER 51.1% → 47.0%, better on 8 of 11 files; the
  closing final's p50 1.52 → 3.14 s on the one-core cost clock (a closing decode hears ~12 s
  instead of ~4 s: ~1.4 instead of ~0.5 CPU-s; that clock gives each session one idle core).
  Through the mesh on the idle machine (tune_00/05/07, real time, 2 cores): closing-final p50
  1.29 s (95% bootstrap 1.14-1.45) vs 1.00 s without context, finals' WER 41.4% vs 45.3%:
  within the 1.5 s goal and more accurate, so it became `balanced`'s default. Topping
  what a decode hears up to 12 s instead (less context for long buffers) kept little of the
  gain (tune_00-08: 42.2% vs 40.4% with 8 s on top, 43.2% without).
- `accurate` = `balanced` + `closing_beam_size` 5 + `context_prompt` off. Same diagnosis, 8 s
  of context, mean of per-file WER on the 11 tune conversations (plain faster-whisper 39.9%):
  greedy with the prompt 47.8%; beam 5 45.9%; no prompt 45.6%; **beam 5 and no prompt
  41.6%**; temperature fallback 46.7%; the full 30 s window 51.1%; only words of probability
  ≥ 0.5 in the prompt 48.9%; hearing 3 s of what follows (which a final within 1.5 s cannot)
  44.4%, 40.1% with beam 5 and no prompt. On 11 more tune conversations (build/dia-tune-extra,
  plain 20.3%): 25.9% with the prompt, 24.1% without, 23.8% with beam 5. No prompt vs prompt
  over the 22: -2.0 points (95% bootstrap -4.2 to -0.1), better on 14. Through the mesh
  (tune_00/03/05/07, real time, idle machine; offline mesh 26.7%): beam 5 without prompt
  32.4%, closing finals p50 2.75 s (2.24-3.05); greedy without prompt 37.8%, 1.76 s
  (1.58-2.47). Without the prompt more closing decodes loop or stop after the context's speech
  (tune_00: 3 of 13 fell back to decoding the buffer alone, 1 of 12 with it), which costs a
  decode: on the cost clock tune_00's closing p50 went 2.80 → 3.34 s. So `balanced` keeps the
  prompt and greedy (the latency goal), `accurate` takes both. In the service its beam
  searches run on a one-thread copy of the model (`TranscriptionSettings.stream_beam_threads`):
  CTranslate2's beam search is faster on one thread than on two on this machine (held out,
  all 11 validate conversations through the mesh: closing p50 1.75 s (1.56-1.88) in the run
  before, 1.61 s (1.48-1.79) with it; benchmarks/README.md, "Beam search on one thread").
- `accurate`'s `second_context_s` 4 s: each closing decode runs twice at once, after the 8 s
  of context and after its last 4 s, and the transcript with the higher mean word
  log-probability is kept. Per utterance on tune (`utterance_context.py`, beam 5, no prompt):
  42.5% → 38.9% (-3.5 points, -5.6 to -1.7, better on 10 of 11, worse on none; 4 s alone
  45.8%); the rule (no margin; 12 s instead of 4 s; a third, greedy decode) chosen there.
  Held out per utterance: 38.7% → 37.0% (-1.7, -2.9 to -0.7, better on 9 of 11). In the
  stream, paired simulations at wall clock: tune 43.3% → 41.3% (-2.0, -5.0 to +0.6), closing
  p50 1.67 → 1.75 s; validate 36.6% → 35.3% (-1.3, -3.1 to +0.4), 1.51 → 1.60 s; the hard
  files (many voices, noise) gain, the easy ones lose a little. Through the mesh on all 11
  validate conversations, two runs: closing p50 1.56 s (1.46-1.66) and 1.58 s (1.44-1.66),
  finals +3.8 (-0.7 to +7.4) and +3.4 points (-0.2 to +6.6) over the offline mesh; -5.4
  points (-9.1 to -1.5) against `balanced` in the same run (-3.1 to -4.0 before). Costs a
  second decode's CPU (two workers a session on the beam instance); `balanced` keeps one
  decode (benchmarks/README.md, "Two closing decodes at once").
- `accurate`'s `endpoint_silence_s` 0.3 s (was 0.5 s, as `balanced`'s; `low_latency` has 0.3):
  many turns in conversation follow each other 0.3-0.5 s apart, and a 0.5 s endpoint ran them
  into one utterance, the first one's words final only at the second one's end. Measured at
  the reference's phrase ends (turn ends followed by a pause; `bench_streaming.py` reports it
  whatever a profile calls an utterance), simulated on tune: phrase ends with a pause of
  0.3 s or more, p50 4.16 → 1.89 s (`accurate`) and 4.16 → 1.38 s (`balanced`); those with
  0.5 s or more not slower; finals' WER +0.1 points (-1.6 to +1.9) and +1.1 (-3.1 to +5.1)
  per file. 0.4 s helped little (3.59 s). Held out (paired simulation, validate): `accurate`
  2.93 → 1.58 s at those phrase ends, closing finals 1.71 → 1.56 s, finals' WER -1.1 points
  (-4.2 to +2.2): taken. `balanced` 2.81 → 1.38 s but its finals' WER +4.0 points (+1.3 to
  +6.6), worse on 9 of 11 (greedy with the committed text as prompt, a shorter utterance is
  misheard more): not taken, `balanced` keeps 0.5 s. benchmarks/README.md, "Phrase ends the
  endpoint ran together".
- `lead_silence_s` 0.2 s, every profile: the silence before a new phrase is cut to 0.2 s. After
  an endpoint the buffer started where the last word ended, so a phrase after a 1 s pause was
  decoded with that second of silence first, and Whisper often calls such audio no speech
  (tune_10, pink noise: no-speech probability 0.73 over "O plano de saúde cobre a cirurgia...",
  0.29 with 0.3 s before it): faster-whisper drops the window and the phrase never got a final.
  The 0.3 s endpoint made it commoner (more utterances, each with its pause first): the
  finals' deletions went from 2.7% to 5.4% of the reference words on tune. Simulated on tune
  (wall clock, paired): `accurate` 0.2 s finals' WER 42.0 -> 41.1% (-1.0 points, -4.4 to +2.5,
  better on 6 of 11), deletions 8.4 -> 3.6%, closing p50 1.78 -> 1.58 s (shorter buffers, so
  cheaper decodes), phrase ends 2.01 -> 1.61 s; 0.4 s: -0.5 points, 1.61 s, deletions still
  8.4% (whole turns of the babble file lost). Held out (paired simulation, validate): finals'
  WER +0.1 points for both profiles (`accurate` -2.0 to +1.9, `balanced` -3.4 to +3.0),
  deletions 5.5 -> 4.7% and 6.1 -> 4.9%, closing p50 1.52 -> 1.48 s and 1.41 -> 1.37 s,
  `accurate`'s p95 3.69 -> 2.68 s: a repair with a small latency gain, not an accuracy gain
  (benchmarks/README.md, "The pause before a phrase").
- `accurate`'s `carry_wordless_s` 2 s: at a 0.3 s endpoint a short word with a pause after
  it ("Em ... dezembro", "O ... pronto-socorro", "Que ... cobraram") is an utterance of its
  own, Whisper often hears nothing in it alone, and its audio went to the context as if
  committed (one way a short word was lost at an utterance boundary on tune; the commonest
  such words are printed by `bench_streaming.py --report`). Kept in the buffer for the next
  utterance instead, on tune (simulated, paired): finals' WER -1.1 points (-3.3 to +0.5),
  better on 6 of 11, deleted words 58 -> 49 (at a boundary between finals 23 -> 21), turns
  with no final 1 -> 0 of 156, latency unchanged (closing p50 1.54 s both). `balanced` (0.5 s
  endpoint, greedy with the committed text as prompt): +1.3 (-2.0 to +4.8), better on 4 of
  11, more substitutions: not taken. Held out (paired simulation, validate): a repair, not
  an accuracy gain: `accurate` lost 65 reference words instead of 89 and 2 turns instead of
  3 of 141, its finals' WER +0.6 points (-1.4 to +3.3), closing p50 1.48 -> 1.47 s
  (benchmarks/README.md, "A word heard alone").
- `count_onsets`: tried, off. The pause before new speech was measured too long (silero shows
  speech after ~0.1 s, and a range under `min_speech_s` counted as a click), so a 0.3 s
  endpoint also fired at 0.2 s pauses inside sentences. Counting the new range at once, on
  tune (simulated, paired): `accurate` -2.7 points (-8.0 to +1.0) but better on only 5 of 11
  (the phone-band file's swing), deletions 6.1 -> 10.2%; `balanced` +1.4 (-0.9 to +3.5),
  worse on 9 of 11 (benchmarks/README.md, "Pauses inside a sentence").
- `straddle_s`: tried, off. A short first word after a pause ("meses | e o barulho") is timed
  by Whisper from where the word before it ended, over the pause the context leaves out, so its
  middle fell in the context and it was dropped as committed (traced on tune_07). Keeping such
  a word recovers it, but it fires rarely and the rest of the stream then takes another
  course: on tune (cost clock, paired) `accurate` +0.3 points (+0.0 to +0.8), the same finals
  on 8 of 11; `balanced` unchanged (benchmarks/README.md, "Words lost where one final ends").
- `context_prefix`: tried, left off (it won on tune and did not hold held out). A closing
  decode transcribes the context again before the buffer, and greedy decoding goes astray or
  stops there; given the committed words as Whisper's prefix it goes on from them instead.
  Diagnosis on tune (`utterance_context.py`, 8 s of context, the 11 conversations, plain
  faster-whisper 37.8% in that run): greedy with the prompt 49.3% → 43.2% (187 → 163 CPU-s);
  beam 5 without prompt 42.5% → 40.2% (201 → 251 CPU-s: CTranslate2 feeds a prefix token by
  token through the beam); beam 3 without prompt, prefix 40.5% (224 CPU-s). In the stream on
  tune_01/03/04 (`balanced`): 24.8/46.8/23.6% → 22.9/41.6/19.4%. But the paired check on the
  held-out split (the same 11 conversations streamed with and without it, `--simulate`, one
  cost model) gave `balanced` 39.6% → 40.7% (+1.1 points, -1.0 to +3.2) and `accurate`
  (beam 5 → 3 with the prefix) 33.9% → 34.4% (+0.5, -1.9 to +2.9), each better on 4-5 files
  of 11 and worse on the rest: no gain that generalises, so neither profile takes it
  (benchmarks/README.md).
- Token budget per decode (`max_new_tokens`): on tune_00, same finals' WER, decode CPU 171 → 68 s,
  decode p95 7.1 → 2.0 s (looping decodes of cut-off buffers stop early).
- On the held-out `validate` split (tables in benchmarks/README.md), with context (today's
  `balanced`) against without (the previous `balanced`): through the mesh on three
  conversations, closing finals p50 1.33 s (1.21-1.42) vs 0.75 s, finals' WER 11.5% vs 30.4%
  (the offline mesh 11.6%); simulated on all 11 (one idle core per session), 1.84 s vs 1.10 s
  and 6.4 points (3.8-9.0) vs 11.9 points (6.1-17.6) above plain faster-whisper on the whole
  file, better on 9 of 11. Through the mesh on all 11 (`balanced`): closing finals p50 1.39 s
  (1.34-1.47), finals' WER 7.8 points (3.7-12.0) above the offline mesh: the issue's latency
  goal holds, its 3-point WER goal does not (five and six voices: +16 and +20).
  Both profiles today, held out (all 11 through the mesh, one run): README and
  benchmarks/README.md, with the commands.
"""
DEFAULT_PROFILE = "balanced"
MAX_CHUNK_S = 1.0
"""Longest audio accepted in one message (20-500 ms is what a live source sends)."""
ENDPOINT_CHECK_S = 0.1
"""Between decodes, the end of an utterance is looked for this often (audio seconds): a VAD
pass over the last ~1.5 s, a few milliseconds."""
_PAUSE_MIN_S = 0.02
"""Quieter than this at the tail is still speech (VAD's ranges reach the end while it goes on)."""
_ONSET_EDGE_S = 0.01
"""A VAD range that ends this close to the end of the audio received is speech still going on
(silero ends such a range at the audio's end)."""
_HEARD_WHOLE_S = 0.15
"""A decode heard a stretch of speech whole when it heard this much audio past its end (VAD
ends speech ranges ~50 ms after the last sound; a word cut at the buffer's end is misheard)."""
_UNHEARD_SPEECH_S = 0.8
"""Speech VAD hears after a closing decode's last word, beyond which that decode is taken to have
left part of the utterance out (Whisper's last word often ends a few hundred ms before VAD's
range does)."""
PROMPT_CHARS = 200
"""Committed text given to the decoder as context (whisper_streaming uses the same amount)."""
CONTEXT_SPEECH_PAD_S = 0.1
"""Silence kept around each stretch of speech in the decoder's context (`context_s`)."""
_PROMPT_HISTORY = 200
"""Committed words remembered for the prompt (more than `PROMPT_CHARS` holds: those the
context makes the decoder hear again are left out of it)."""
_EMPTY = np.zeros(0, dtype=np.float32)
_LEAD_TRIM_MIN_S = 0.05
"""Less silence than this in excess of `lead_silence_s` is left in the buffer (not worth a copy)."""
_TIME_SLACK_S = 0.5
"""Word timestamps wobble between decodes; words starting this much before the commit point are
still compared against the committed tail before being dropped."""


@dataclass(frozen=True)
class SessionOptions:
    """What a caller chooses for one session (validated by `resolve_options`)."""

    profile: str = DEFAULT_PROFILE
    language: str | None = "pt"
    model: str = ""
    interim_results: bool = True
    endpointing: bool = True
    endpoint_silence_s: float = 0.0  # 0 = the profile's
    max_session_s: float = 0.0  # 0 = the service's maximum
    initial_prompt: str = ""


ROVER_PROFILE = "accurate"
"""The profile a replica's `stream_rover_contexts` applies to (`with_rover`)."""


def with_rover(profile: LatencyProfile, contexts_s: Sequence[float]) -> LatencyProfile:
    """`profile` as a replica with the cores (or a GPU) for more closing decodes at once runs
    it: `ROVER_PROFILE` with `contexts_s` as its `rover_contexts_s`; any other profile, or no
    contexts, as it is."""
    if not contexts_s or profile.name != ROVER_PROFILE:
        return profile
    return replace(profile, rover_contexts_s=tuple(float(c) for c in contexts_s))


def resolve_options(
    options: SessionOptions, service_max_s: float
) -> tuple[SessionOptions, LatencyProfile]:
    """Check the options and fill the blanks from the profile and the service limits."""
    profile = PROFILES.get(options.profile or DEFAULT_PROFILE)
    if profile is None:
        raise InvalidInput(
            f"unknown latency profile {options.profile!r}; choose from {', '.join(PROFILES)}",
            field="config.latency_profile",
        )
    if options.language is None:
        raise InvalidInput(
            'language detection ("auto") is not available for streaming; name the '
            "language, for example pt-BR",
            field="config.language_code",
        )
    silence = options.endpoint_silence_s or profile.endpoint_silence_s
    if not 0.1 <= silence <= 5.0:
        raise InvalidInput(
            f"endpointing silence must be between 0.1 and 5 s, got {silence:g} s",
            field="config.endpointing.silence",
        )
    if options.max_session_s < 0:
        raise InvalidInput(
            "max_session_duration must not be negative", field="config.max_session_duration"
        )
    if options.max_session_s > service_max_s:
        raise InvalidInput(
            f"max_session_duration {options.max_session_s:g} s is above this service's "
            f"limit of {service_max_s:g} s",
            field="config.max_session_duration",
        )
    return replace(
        options,
        profile=profile.name,
        endpoint_silence_s=silence,
        max_session_s=options.max_session_s or service_max_s,
    ), profile


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interim:
    """The uncommitted tail of the latest hypothesis (replaces the previous interim result)."""

    text: str
    stability: float
    start: float
    end: float


@dataclass(frozen=True)
class Final:
    """Committed words: never change, never repeated."""

    segment: Segment
    end_of_utterance: bool


@dataclass(frozen=True)
class SpeechEvent:
    kind: str  # "begin" | "end"
    offset: float


@dataclass(frozen=True)
class StreamSummary:
    audio_duration: float
    final_count: int
    interim_count: int
    decode_steps: int
    processing_seconds: float
    model: str
    profile: str
    words_removed: int


Event = Interim | Final | SpeechEvent | StreamSummary


class Decoder(Protocol):
    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        """Decode float32 16 kHz audio; segment and word times relative to the audio's start.

        `prompt`: text said before the audio. `prefix`: the transcript of the audio's start,
        which the decoder takes as its own first words instead of decoding them (their words
        are returned too, aligned); may end with Whisper timestamp tokens (`<|6.40|>`)."""


VadFn = Callable[[np.ndarray], list[tuple[float, float]]]
"""Speech ranges (seconds from the audio's start) in float32 16 kHz audio."""


# -- word helpers ----------------------------------------------------------------------------


def agreed_prefix(hypotheses: Sequence[Sequence[Word]]) -> int:
    """Length of the longest prefix all hypotheses share (normalised words)."""
    if not hypotheses:
        return 0
    n = min(len(h) for h in hypotheses)
    for i in range(n):
        key = word_key(hypotheses[0][i].word)
        if any(word_key(h[i].word) != key for h in hypotheses[1:]):
            return i
    return n


def new_words(
    hypothesis: Sequence[Word],
    committed_tail: Sequence[Word],
    commit_time: float,
    max_ngram: int = 5,
) -> list[Word]:
    """The words of `hypothesis` that are not yet committed.

    Words that start well before the commit point are old. Near it, timestamps wobble, so the
    hypothesis' head is matched against the committed tail: the longest n-gram (n ≤ `max_ngram`)
    that ends the committed text and starts the candidate words is dropped. Whatever still lies
    wholly before the commit point after that is old too.
    """
    candidates = [w for w in hypothesis if w.start >= commit_time - _TIME_SLACK_S]
    if committed_tail and candidates:
        tail = committed_tail[-max_ngram:]
        head = candidates[:max_ngram]
        for n in range(min(len(tail), len(head)), 0, -1):
            # The same words, heard again over the same audio (a word said again later does
            # not overlap its earlier self in time).
            if all(
                word_key(a.word) == word_key(b.word) and _overlap(a, b)
                for a, b in zip(tail[-n:], head[:n])
            ):
                candidates = candidates[n:]
                break
    while candidates and candidates[0].end <= commit_time + 1e-3:
        candidates.pop(0)
    return candidates


def _overlap(a: Word, b: Word) -> bool:
    """Whether two timed words are one word heard twice: centres within about half a word's
    length. Re-decodes of the same audio move a word by less than ~0.1 s; a word said twice in a
    row ("não, não") has its copies a whole word (plus a gap) apart."""
    half = 0.5 * max(a.end - a.start, b.end - b.start, 0.2) + 0.02
    return abs((a.start + a.end) - (b.start + b.end)) / 2 < half


def stability(current: Sequence[Word], previous: Sequence[Word]) -> float:
    """Share of `current`'s words that `previous` also had, in order (0 without a previous)."""
    if not current or not previous:
        return 0.0
    a, b = [word_key(w.word) for w in current], [word_key(w.word) for w in previous]
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    same = sum(block.size for block in matcher.get_matching_blocks())
    return round(same / len(a), 3)


def _reach(words: Sequence[Word]) -> float:
    """Where the last of `words` ends (0 without words)."""
    return max((w.end for w in words), default=0.0)


def _text(words: Sequence[Word]) -> str:
    return " ".join(w.word for w in words).strip()


# -- the session -----------------------------------------------------------------------------


_SECOND_CONTEXT_MIN_GAP_S = 0.5
"""A second closing decode (`second_context_s`) runs only when the context is at least this much
longer than the second decode's: otherwise it would hear nearly the same audio."""
_FLOOR_PROBABILITY = 1e-6
ROVER_SETTINGS = rover.RoverSettings(vote_weight=0.5, null_confidence=0.5)
"""How `rover_contexts_s` votes: a word's share of the decodes and its mean probability count
alike, and saying nothing counts as probability 0.5 (chosen on tune, benchmarks/README.md)."""


def confidence(words: Sequence[Word], failed: bool = False) -> float:
    """Mean log-probability of `words` (Whisper's word probabilities): how sure the decoder was
    of a transcript, comparable between decodes of the same speech heard after different
    contexts. -inf for a looping decode, and a floor below any real transcript for no words."""
    if failed:
        return float("-inf")
    if not words:
        return float(np.log(_FLOOR_PROBABILITY)) - 1.0
    return float(np.mean(word_log_probabilities(words)))


def word_log_probabilities(words: Sequence[Word]) -> list[float]:
    """Each word's log-probability, floored (a word Whisper gave probability 0 is not -inf):
    what `confidence` averages, and what other choice rules are tried on
    (`benchmarks/utterance_context.py --criteria`)."""
    return [float(np.log(max(w.probability, _FLOOR_PROBABILITY))) for w in words]


def _seconds(pieces: Sequence[tuple[float, np.ndarray]]) -> float:
    return sum(p.size for _, p in pieces) / SAMPLE_RATE


def _tail(
    pieces: Sequence[tuple[float, np.ndarray]], seconds: float
) -> list[tuple[float, np.ndarray]]:
    """The last `seconds` of context `pieces` ((absolute start, samples), in order)."""
    keep = int(round(seconds * SAMPLE_RATE))
    out: list[tuple[float, np.ndarray]] = []
    for at, piece in reversed(pieces):
        if keep <= 0:
            break
        if piece.size > keep:
            cut = piece.size - keep
            at, piece = at + cut / SAMPLE_RATE, piece[cut:]
        out.append((at, piece))
        keep -= piece.size
    return out[::-1]


_side_decodes: ThreadPoolExecutor | None = None
_side_decodes_lock = threading.Lock()


_SIDE_THREADS_MAX = 256
"""At most this many side decodes wait at once. Threads start only when a decode finds none
idle, and each only waits on the model, whose workers bound what really runs: the cap is far
above what a replica's sessions submit (`max_streams` × (`decodes_at_once` − 1)), so a
session's extra decodes never queue behind another's."""


def _side_pool() -> ThreadPoolExecutor:
    """Threads for the closing decodes a session runs beside its own (`second_context_s`,
    `rover_contexts_s`), shared by all sessions."""
    global _side_decodes
    with _side_decodes_lock:
        if _side_decodes is None:
            _side_decodes = ThreadPoolExecutor(
                max_workers=_SIDE_THREADS_MAX, thread_name_prefix="stream-second"
            )
        return _side_decodes


@dataclass
class _Counters:
    finals: int = 0
    interims: int = 0
    steps: int = 0
    processing_s: float = 0.0
    removed: int = 0
    rescues: int = 0
    redecodes: int = 0
    """Closing decodes decoded again because they were doubtful (`doubt_logprob`)."""
    second_decodes: int = 0
    """Closing decodes run a second time after a shorter context (`second_context_s`)."""
    second_kept: int = 0
    """Of those, how many times the second transcript was kept."""


@dataclass
class _Hypothesis:
    words: list[Word]
    segment_ends: list[float]
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    failed: bool = False
    """The decode looped (compression-ratio guard): its words were thrown away."""
    own_logprob: float | None = None
    """Mean `avg_logprob` of the segments that reach into the buffer (None: none did)."""
    removed: int = 0
    """Words the guards threw away (a loop, words piled at one instant)."""


class StreamingSession:
    """One caller's stream: `push` audio, `step` when `due`, `finish` at the end.

    `decode` runs the model on the buffer; `vad` finds speech (None: every stretch is speech and
    endpointing is off). All times are seconds from the first sample of the session.
    """

    def __init__(
        self,
        decode: Decoder,
        vad: VadFn | None,
        options: SessionOptions,
        profile: LatencyProfile,
        *,
        model_name: str = "",
        clock: Callable[[], float] = time.perf_counter,
        rescue: Decoder | None = None,
        closing: Decoder | None = None,
        doubt: Decoder | None = None,
    ):
        self._decode = decode
        self._closing = closing or decode
        """Decodes that may close an utterance (`LatencyProfile.closing_beam_size`)."""
        self._doubt = doubt if profile.doubt_logprob is not None else None
        """Decodes a closing decode's audio again when its transcript is doubtful
        (`LatencyProfile.doubt_logprob`)."""
        self._rescue = rescue
        """Decodes an utterance once more, more carefully (Whisper's full 30 s context, the
        temperature fallback, no prompt), when the decode an utterance's final text would come
        from looped: without it the whole phrase would be dropped."""
        self._vad = vad
        self.options = options
        self.profile = profile
        self.model_name = model_name
        self._clock = clock
        self._buffer = np.zeros(0, dtype=np.float32)
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self.buffer_start = 0.0  # absolute offset of the buffer's first sample
        self._received = 0  # samples received
        self._last_step_at = 0  # samples received when the last step ran
        self._last_check_at = 0  # samples received at the last endpoint check
        self._last_decode_end = 0.0  # audio offset the last decode heard up to
        self._last_decode_closing = False  # it was a decode that may close an utterance
        self.commit_time = 0.0
        self._committed: list[Word] = []  # recent committed words (tail for matching)
        self._prompt_words: deque[tuple[str, float]] = deque(maxlen=_PROMPT_HISTORY)
        # Earlier speech the decoder hears before the buffer: (absolute start, samples).
        self._context: deque[tuple[float, np.ndarray]] = deque()
        self._context_samples = 0
        self._buffer_speech: list[tuple[float, float]] = []  # VAD ranges of the last step
        self._onset: float | None = None  # where speech just begun again starts (_split_onset)
        self._carried_until: float | None = None  # end of wordless speech kept (carry_wordless_s)
        self._heard: list[tuple[float, float]] = []  # see heard_layout
        self._running = threading.local()  # .layout: what this thread's decode hears
        self._history: deque[list[Word]] = deque(maxlen=max(profile.agreement - 1, 1))
        self._last_interim: tuple[str, float, float] | None = None
        self._in_speech = False
        self._last_hypothesis = _Hypothesis([], [])
        self._loop_context: list[Word] = []
        self.counters = _Counters()
        self.finished = False
        if options.initial_prompt:
            self._remember_prompt([(w, float("-inf")) for w in options.initial_prompt.split()])

    # -- input --------------------------------------------------------------------------

    @property
    def received_s(self) -> float:
        return self._received / SAMPLE_RATE

    @property
    def buffer_s(self) -> float:
        return (len(self._buffer) + self._pending_samples) / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> None:
        """Append int16 (or float32) samples; refuses audio beyond the session's maximum length."""
        if samples.size == 0:
            return
        if (self._received + samples.size) / SAMPLE_RATE > self.options.max_session_s:
            raise DeadlineExceeded(
                "the streaming session reached its maximum length of "
                f"{self.options.max_session_s:g} s of audio; text up to that point was sent, "
                "open a new session to go on",
                metadata={"max_session_seconds": f"{self.options.max_session_s:g}"},
            )
        audio = samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples
        self._pending.append(audio.astype(np.float32, copy=False))
        self._pending_samples += audio.size
        self._received += audio.size

    def due(self) -> bool:
        """Time for `step`: a decode is due, or (in speech) a check for the utterance's end."""
        new = self._received - self._last_step_at
        if new >= self.profile.step_s * SAMPLE_RATE:
            return True
        return (
            self._in_speech
            and self._vad is not None
            and self.options.endpointing
            and self._received - self._last_check_at >= ENDPOINT_CHECK_S * SAMPLE_RATE
        )

    def _consolidate(self) -> np.ndarray:
        if self._pending:
            self._buffer = np.concatenate([self._buffer, *self._pending])
            self._pending.clear()
            self._pending_samples = 0
        return self._buffer

    def _trim_to(self, offset: float) -> None:
        """Drop audio before `offset` (never past what is committed or received); its speech
        goes to the decoder's context (`context_s`)."""
        offset = min(offset, self.received_s)
        cut = int(round((offset - self.buffer_start) * SAMPLE_RATE))
        if cut <= 0:
            return
        self._consolidate()
        if self.profile.context_s > 0:
            self._keep_context(self._buffer[:cut], self.buffer_start)
        self._buffer = self._buffer[cut:].copy()
        self.buffer_start += cut / SAMPLE_RATE

    def _keep_context(self, dropped: np.ndarray, start: float) -> None:
        """Append the speech of `dropped` (starting at `start`) to the context, padded a little,
        and forget the oldest beyond `context_s`."""
        end = start + dropped.size / SAMPLE_RATE
        pad = CONTEXT_SPEECH_PAD_S
        spans: list[list[float]] = []
        for a, b in self._buffer_speech:
            a, b = max(a - pad, start), min(b + pad, end)
            if b <= a:
                continue
            if spans and a <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b])
        for a, b in spans:
            first, last = (int(round((t - start) * SAMPLE_RATE)) for t in (a, b))
            if last > first:
                self._context.append((a, dropped[first:last]))
                self._context_samples += last - first
        limit = int(self.profile.context_kept_s * SAMPLE_RATE)
        while self._context_samples > limit:
            excess = self._context_samples - limit
            at, head = self._context[0]
            if head.size <= excess:
                self._context.popleft()
                self._context_samples -= head.size
            else:
                self._context[0] = (at + excess / SAMPLE_RATE, head[excess:])
                self._context_samples -= excess

    def heard_layout(self) -> list[tuple[float, float]]:
        """What the decode running now on this thread (or else the one whose words were last
        taken) hears, in order: (absolute start, seconds) of each piece of context, then of the
        buffer."""
        return list(getattr(self._running, "layout", self._heard))

    # -- decoding -----------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Decode the buffer once (or, between decodes, look for the end of the utterance)."""
        if self._received - self._last_step_at < self.profile.step_s * SAMPLE_RATE:
            self._last_check_at = self._received
            if not self._tail_pause():
                return []
        elif self._just_paused():
            # The speaker has just stopped: a decode now would miss the phrase's last sounds
            # and keep the CPU busy when the decode that hears it all is due, a moment later.
            self._last_check_at = self._received
            return []
        return self._run_step(final=False)

    def _tail_quiet(self) -> tuple[float, bool]:
        """The pause VAD hears at the end of the last second or so: its length in seconds (inf:
        no speech heard; 0 without VAD), and whether speech has begun again since
        (`LatencyProfile.count_onsets`; the pause then ended where that speech began)."""
        if self._vad is None:  # no VAD: no endpointing, nothing is ever quiet
            return 0.0, False
        audio = self._consolidate()
        tail = audio[-int((self.options.endpoint_silence_s + 1.0) * SAMPLE_RATE) :]
        edge = len(tail) / SAMPLE_RATE
        ranges, onset = self._split_onset(self._vad(tail), edge)
        if not ranges:
            return float("inf"), onset is not None
        return (edge if onset is None else onset) - ranges[-1][1], onset is not None

    def _split_onset(
        self, ranges: Sequence[tuple[float, float]], edge: float
    ) -> tuple[list[tuple[float, float]], float | None]:
        """VAD's `ranges` (on audio ending at `edge`) that count as speech (`min_speech_s` or
        longer), and where speech that has just begun again starts: a range still going on at
        `edge` too short to count yet (None: none, or `count_onsets` off)."""
        kept = [(a, b) for a, b in ranges if b - a >= self.profile.min_speech_s]
        onset = None
        if self.profile.count_onsets and ranges:
            a, b = ranges[-1]
            if b - a < self.profile.min_speech_s and b >= edge - _ONSET_EDGE_S:
                onset = a
        return kept, onset

    def _tail_pause(self) -> bool:
        """Cheap check of the last second or so between decodes: is a step worth running now?

        Yes when speech stopped for the endpointing silence (the utterance ends), or for
        `speculate_silence_s` and the last decode did not hear that speech's end (a decode now
        hears the whole phrase; `speculate_silence_s`). VAD over the whole buffer costs ~10 ms
        per audio second; between decodes only the tail is checked, and a full step (with full
        VAD) follows."""
        quiet, resumed = self._tail_quiet()
        if quiet >= self.options.endpoint_silence_s:
            return True
        speculate = self.profile.speculate_silence_s
        speech_end = self.received_s - quiet
        return (
            not resumed
            and 0 < speculate <= quiet
            and self._last_decode_end < speech_end + _HEARD_WHOLE_S
        )

    def _just_paused(self) -> bool:
        """A step is due but speech stopped less than `speculate_silence_s` ago (the decode
        waits for that, at most: then it hears the whole phrase)."""
        if not (
            self.profile.speculate_silence_s > 0
            and self._in_speech
            and self._vad is not None
            and self.options.endpointing
        ):
            return False
        quiet, resumed = self._tail_quiet()
        return not resumed and _PAUSE_MIN_S < quiet < self.profile.speculate_silence_s

    def finish(self) -> list[Event]:
        """The stream ended: commit everything still heard, close speech, summarise."""
        if self.finished:
            return []
        events = (
            self._run_step(final=True)
            if self._received > self._last_step_at or self._history
            else []
        )
        if self._in_speech:
            events.append(SpeechEvent("end", self.received_s))
            self._in_speech = False
        self.finished = True
        events.append(self.summary())
        return events

    def summary(self) -> StreamSummary:
        c = self.counters
        return StreamSummary(
            self.received_s,
            c.finals,
            c.interims,
            c.steps,
            c.processing_s,
            self.model_name,
            self.profile.name,
            c.removed,
        )

    def _speech(self, audio: np.ndarray) -> list[tuple[float, float]]:
        if self._vad is None:
            self._buffer_speech = [(self.buffer_start, self.received_s)] if audio.size else []
            return list(self._buffer_speech)
        at = self.buffer_start
        self._buffer_speech = [(at + a, at + b) for a, b in self._vad(audio)]
        kept, onset = self._split_onset(self._buffer_speech, self.received_s)
        self._onset = onset
        return kept

    def _run_step(self, final: bool) -> list[Event]:
        audio = self._consolidate()
        self._last_step_at = self._received
        end = self.received_s
        events: list[Event] = []
        started = self._clock()
        with tracer.start_as_current_span("transcription.stream_step") as span:
            speech = self._speech(audio)
            self._release_carried(speech, end)
            live = [(a, b) for a, b in speech if b > self.commit_time + 0.05]
            if live and not self._in_speech:
                self._in_speech = True
                events.append(SpeechEvent("begin", max(live[0][0], self.commit_time)))
            if live and self._trim_lead_silence():
                audio = self._buffer
            endpoint_at = self._endpoint(live, end)
            endpoint = endpoint_at is not None
            span.set_attributes(
                {
                    "asr.stream.audio_s": end,
                    "asr.stream.buffer_s": len(audio) / SAMPLE_RATE,
                    "asr.stream.speech": bool(live),
                    "asr.stream.endpoint": endpoint,
                    "asr.stream.final": final,
                }
            )
            if not live:
                # Silence (or noise VAD does not call speech): nothing to decode. Words the last
                # decode heard that are still uncommitted (VAD's idea of where speech ended can
                # move) are committed rather than lost. Keep a short pre-roll so the next word's
                # onset is not cut.
                leftover = self._history[-1] if self._history else []
                events.extend(self._commit(list(leftover), self._last_hypothesis, True))
                self._history.clear()
                events.extend(self._interim([]))
                if self._in_speech:  # speech VAD took back: close it, begin/end stay paired
                    events.append(
                        SpeechEvent("end", max(self.commit_time, min(end, self.buffer_start)))
                    )
                    self._in_speech = False
                self._trim_to(max(self.commit_time, end - 1.0))
            elif (
                not (final or endpoint)
                and self.options.endpointing
                and live[-1][1] <= self._last_decode_end - 0.1
            ):
                # Only silence since the last decode (a pause that is not yet an endpoint):
                # decoding again would hear nothing new. Wait for more speech or the endpoint,
                # which commits from the last decode.
                span.set_attribute("asr.stream.decoded", False)
            else:
                heard_whole = bool(
                    self._history
                    and not self._last_hypothesis.failed
                    and (
                        (
                            endpoint_at is not None
                            and not final
                            and self._last_decode_end >= endpoint_at + _HEARD_WHOLE_S
                        )
                        or (final and self._heard_to_the_end(live))
                    )
                )
                if heard_whole and not self._doubtful(self._last_hypothesis):
                    # The last decode already heard the whole utterance (at the end of the
                    # stream: all the speech left): commit from it instead of decoding again
                    # (the final comes a decode sooner).
                    hypothesis, words = self._last_hypothesis, list(self._history[-1])
                    span.set_attribute("asr.stream.decoded", False)
                else:
                    if heard_whole:
                        # It heard the whole utterance but is unsure of it: only the doubt
                        # decoder's transcript is worth waiting for.
                        hypothesis = self._redecode(audio, self._last_hypothesis)
                        self._last_decode_closing = True
                    else:
                        closing = (
                            final
                            or endpoint
                            or live[-1][1] <= end - self.profile.speculate_silence_s
                        )
                        hypothesis = self._last_hypothesis = self._hypothesis(
                            audio, with_context=closing
                        )
                        self._last_decode_closing = closing
                        if (final or endpoint) and self._doubtful(hypothesis):
                            hypothesis = self._redecode(audio, hypothesis)
                    if hypothesis.failed and (final or endpoint_at is not None):
                        # The utterance's last chance looped: decode it once more, carefully,
                        # rather than drop the whole phrase.
                        hypothesis = self._last_hypothesis = self._hypothesis(
                            audio, rescue=True, with_context=True
                        )
                        self._last_decode_closing = True
                        span.set_attribute("asr.stream.rescued", True)
                    self._last_decode_end = end
                    self.counters.steps += 1
                    words = new_words(hypothesis.words, self._committed, self.commit_time)
                    # What this decode closes: at the end of the stream everything heard (all
                    # of it is committed now), at an endpoint the utterance before it,
                    # otherwise (speech just stopped) the speech so far.
                    closes_at = live[-1][1] if final or endpoint_at is None else endpoint_at
                    if (
                        len(self._heard) > 1
                        and not hypothesis.failed
                        and self._context_dropped(words, live, closes_at)
                    ):
                        # Whisper sometimes ends its transcript with the context's speech, or
                        # a few words into the buffer: the speech it left out would be trimmed
                        # with the utterance. Decode the buffer alone and keep the transcript
                        # that reaches further. (A loop has its own remedy: the next decode,
                        # or the rescue.)
                        alone = self._hypothesis(audio)
                        alone_words = new_words(alone.words, self._committed, self.commit_time)
                        if not alone.failed and _reach(alone_words) > _reach(words):
                            hypothesis = self._last_hypothesis = alone
                            words = alone_words
                        span.set_attribute("asr.stream.context_dropped_phrase", True)
                    span.set_attribute("asr.stream.decoded", True)
                if final:
                    commit = words
                elif endpoint_at is not None:
                    # The utterance ends at the silence: everything said before it is final,
                    # whatever the agreement. Words after it (next utterance) wait as usual.
                    commit = [w for w in words if w.start < endpoint_at + 0.1]
                else:
                    agree = self._history and len(audio) / SAMPLE_RATE > self.profile.agree_after_s
                    commit = words[: agreed_prefix([*self._history, words])] if agree else []
                    if not commit and len(audio) / SAMPLE_RATE > self.profile.max_buffer_s:
                        # Bounded buffer: commit the oldest words even without agreement.
                        commit = [
                            w for w in words if w.end <= end - self.profile.window_s / 2
                        ] or words[:1]
                rest = words[len(commit) :]
                utterance_end = final or endpoint
                events.extend(self._commit(commit, hypothesis, utterance_end))
                events.extend(self._interim(rest))
                self._history.append(rest)
                if endpoint_at is not None:
                    events.append(SpeechEvent("end", endpoint_at))
                    self._in_speech = False
                    if (
                        not commit
                        and self.profile.carry_wordless_s > 0
                        and self._carried_until is None
                    ):
                        # No word for speech VAD heard: it waits in the buffer for the next
                        # utterance instead of going to the context as if committed. Once
                        # only: if that one gives no word either, both go (noise VAD calls
                        # speech must not grow the buffer without end).
                        self._carried_until = endpoint_at
                        span.set_attribute("asr.stream.carried_wordless", True)
                    else:
                        self._carried_until = None
                        self.commit_time = max(self.commit_time, min(endpoint_at, end))
                        self._trim_to(min([self.commit_time, *(w.start for w in rest)]))
                    following = [a for a, _ in live if a > endpoint_at]
                    if following:
                        self._in_speech = True
                        events.append(SpeechEvent("begin", following[0]))
                elif len(audio) / SAMPLE_RATE > self.profile.window_s:
                    done = [t for t in hypothesis.segment_ends if t <= self.commit_time + 1e-3]
                    cut = max(done, default=0.0)
                    if (
                        cut <= self.buffer_start
                        and len(audio) / SAMPLE_RATE > self.profile.max_buffer_s
                    ):
                        cut = self.commit_time
                        if cut <= self.buffer_start and len(audio) >= WORDLESS_BOUND_SAMPLES:
                            # No word in as much audio as Whisper's window holds (babble,
                            # music or noise VAD calls speech for as long as it lasts): its
                            # older part goes, as a word ending there would be committed, or
                            # the buffer and each decode of it grow without bound. Not at
                            # `max_buffer_s`: under babble a decode often hears nothing where
                            # a longer one later hears words (tune_08: the first 12 s lost).
                            cut = end - self.profile.window_s / 2
                            self.commit_time = max(self.commit_time, cut)
                            dropped = cut - self.buffer_start
                            span.set_attribute("asr.stream.wordless_dropped_s", dropped)
                    if cut > self.buffer_start:
                        self._trim_to(cut)  # only committed audio goes
                span.set_attributes(
                    {
                        "asr.stream.committed_words": len(commit),
                        "asr.stream.interim_words": len(rest),
                    }
                )
            elapsed = self._clock() - started
            self.counters.processing_s += elapsed
            span.set_attribute("asr.stream.step_s", elapsed)
        return events

    def _trim_lead_silence(self) -> bool:
        """Cut the silence before new speech down to `lead_silence_s` (see the profile); never
        audio under a word of the last decode not yet committed. True when the buffer changed."""
        keep = self.profile.lead_silence_s
        onset = next((a for a, b in self._buffer_speech if b > self.commit_time + 0.05), None)
        if keep <= 0 or onset is None or onset < self.commit_time:
            return False
        pending = self._history[-1] if self._history else []
        cut = min([onset - keep, *(w.start for w in pending)])
        if cut - self.buffer_start < _LEAD_TRIM_MIN_S:
            return False
        self._trim_to(cut)
        return True

    def _context_dropped(
        self, words: Sequence[Word], live: Sequence[tuple[float, float]], closes_at: float
    ) -> bool:
        """Did a decode that heard the context leave out speech of the utterance it closes?

        Yes when VAD hears `_UNHEARD_SPEECH_S` of speech between its last word (or what is
        committed) and `closes_at`, or when it gave no word where the decode before it heard
        some (a short phrase)."""
        if not words and self._history and self._history[-1]:
            return True
        heard_to = max(self.commit_time, _reach(words))
        unheard = sum(max(0.0, min(b, closes_at) - max(a, heard_to)) for a, b in live)
        return unheard >= _UNHEARD_SPEECH_S

    def _heard_to_the_end(self, live: Sequence[tuple[float, float]]) -> bool:
        """At the end of the stream (`live`: its speech ranges, not empty): did the last decode
        hear all the speech still uncommitted, as a decode that may close an utterance (after
        the context)?

        Typically the decode that ran when the speaker stopped (`speculate_silence_s`), the
        stream then closed before the endpoint silence: decoding the same speech again would
        only delay the last final by a decode. A grid decode (no context) does not count: its
        words would be the less accurate ones."""
        return self._last_decode_closing and self._last_decode_end >= live[-1][1] + _HEARD_WHOLE_S

    def _release_carried(self, speech: Sequence[tuple[float, float]], end: float) -> None:
        """Let wordless speech kept for the next utterance go (`carry_wordless_s`) once that long
        has passed after it without new speech: it is treated as committed from then on."""
        carried = self._carried_until
        if carried is not None and self.commit_time >= carried:
            self._carried_until = None  # committed since (agreement, a bounded buffer)
            return
        if carried is None or end - carried <= self.profile.carry_wordless_s:
            return
        if any(b > carried + 0.05 for _, b in speech):
            return  # speech came after it: they make one utterance
        self._carried_until = None
        self.commit_time = max(self.commit_time, carried)

    def _endpoint(self, live: list[tuple[float, float]], end: float) -> float | None:
        """Where the first utterance in `live` ended (silence long enough after it), or None.
        Wordless speech kept for the next utterance (`carry_wordless_s`) ends none."""
        if self._carried_until is not None:
            live = [(a, b) for a, b in live if b > self._carried_until + 1e-6]
        if not live or not self.options.endpointing or self._vad is None:
            return None
        silence = self.options.endpoint_silence_s
        for (_, b), (a, _) in zip(live, live[1:]):
            if a - b >= silence:
                return b
        # Speech that has just begun again ends the pause (`LatencyProfile.count_onsets`).
        pause_end = end if self._onset is None or self._onset < live[-1][1] else self._onset
        return live[-1][1] if pause_end - live[-1][1] >= silence else None

    def _doubtful(self, hypothesis: _Hypothesis) -> bool:
        """Should this closing decode be decoded again (`LatencyProfile.doubt_logprob`)?"""
        threshold = self.profile.doubt_logprob
        if self._doubt is None or threshold is None:
            return False
        mean = hypothesis.own_logprob
        return hypothesis.failed or mean is None or mean < threshold

    def _redecode(self, audio: np.ndarray, first: _Hypothesis) -> _Hypothesis:
        """Decode a doubtful closing decode's audio again with the doubt decoder; its
        transcript is kept unless it loops and `first` did not."""
        again = self._hypothesis(audio, with_context=True, doubt=True)
        self.counters.redecodes += 1
        trace.get_current_span().set_attribute("asr.stream.redecoded", True)
        chosen = again if not again.failed or first.failed else first
        self._last_hypothesis = chosen
        return chosen

    def _hypothesis(
        self,
        audio: np.ndarray,
        rescue: bool = False,
        with_context: bool = False,
        doubt: bool = False,
    ) -> _Hypothesis:
        """Decode the buffer, after the context (`context_s`) when `with_context`; with the
        doubt decoder (no committed text as prompt) when `doubt`. A plain closing decode also
        runs after a shorter context at the same time when the profile says so
        (`second_context_s`), and the more confident transcript is kept."""
        kept = list(self._context) if with_context else []
        pieces = _tail(kept, self.profile.context_s)
        # Set here, not per decode: a second decode (below) shares this step's span.
        trace.get_current_span().set_attribute("asr.stream.context_s", _seconds(pieces))
        if not (rescue or doubt) and kept and self.profile.rover_contexts_s:
            return self._combined(audio, kept, pieces)
        second = self.profile.second_context_s
        if not (rescue or doubt) and pieces and second > 0:
            shorter = _tail(pieces, second)
            if _seconds(pieces) - _seconds(shorter) >= _SECOND_CONTEXT_MIN_GAP_S:
                run = contextvars.copy_context().run  # its spans join this step's trace
                pending = _side_pool().submit(run, self._decode_heard, audio, shorter, True)
                first, first_heard = self._decode_heard(audio, pieces, True)
                other, other_heard = pending.result()
                self.counters.second_decodes += 1
                keep_other = confidence(other.words, other.failed) > confidence(
                    first.words, first.failed
                )
                self.counters.second_kept += keep_other
                self.counters.removed += (other if keep_other else first).removed
                span = trace.get_current_span()
                span.set_attribute("asr.stream.second_context_s", _seconds(shorter))
                span.set_attribute("asr.stream.second_context_kept", keep_other)
                self._heard = other_heard if keep_other else first_heard
                return other if keep_other else first
        hypothesis, self._heard = self._decode_heard(audio, pieces, with_context, rescue, doubt)
        self.counters.removed += hypothesis.removed
        return hypothesis

    def _combined(
        self,
        audio: np.ndarray,
        kept: Sequence[tuple[float, np.ndarray]],
        pieces: Sequence[tuple[float, np.ndarray]],
    ) -> _Hypothesis:
        """The closing decodes of `rover_contexts_s`: the buffer after `pieces` (the full
        context), after the `second_context_s` and `rover_contexts_s` tails of what the session
        `kept`, all at once, their words combined word by word. A looping decode takes no part;
        if all loop, the first one's failure is returned."""
        second = self.profile.second_context_s
        tails = [*([second] if second > 0 else []), *self.profile.rover_contexts_s]
        # A context longer than what is kept is all of it: the same decode, decoded once and
        # counted once a context (as `benchmarks/closing_candidates.py` scored them).
        heard = [round(min(s, _seconds(kept)), 3) for s in tails]
        first_heard_s = round(_seconds(pieces), 3)
        pending = {  # each in a copy of this context: their spans join this step's trace
            seconds: _side_pool().submit(
                contextvars.copy_context().run,
                self._decode_heard,
                audio,
                _tail(kept, seconds),
                True,
                alone=seconds == 0,
            )
            for seconds in dict.fromkeys(heard)
            if seconds != first_heard_s
        }
        first, first_heard = self._decode_heard(audio, pieces, True)
        done = {seconds: p.result()[0] for seconds, p in pending.items()}
        results = [first, *(first if s == first_heard_s else done[s] for s in heard)]
        self.counters.second_decodes += len(pending)
        usable = [h for h in results if not h.failed]
        self._heard = first_heard
        span = trace.get_current_span()
        span.set_attribute("asr.stream.combined_decodes", len(usable))
        if not usable:
            self.counters.removed += first.removed
            return first
        base = usable[0]
        words = rover.combine([h.words for h in usable], ROVER_SETTINGS)
        self.counters.removed += base.removed
        return replace(base, words=words)

    def _decode_heard(
        self,
        audio: np.ndarray,
        pieces: Sequence[tuple[float, np.ndarray]],
        closing: bool,
        rescue: bool = False,
        doubt: bool = False,
        alone: bool = False,
    ) -> tuple[_Hypothesis, list[tuple[float, float]]]:
        """Decode the context `pieces` ((absolute start, samples), in order) then the buffer,
        with the closing decoder when `closing` (a decode that may close an utterance); returns
        the buffer's words and what was heard (`heard_layout`). Thread-safe: reads the session,
        changes nothing (the caller counts what the guards removed from the decode it keeps;
        a rescue counts itself). `alone`: a closing decode of the buffer without context
        (`rover_contexts_s` 0), prompted as one with context."""
        context = np.concatenate([p for _, p in pieces]) if pieces else _EMPTY
        heard_layout = [(at, p.size / SAMPLE_RATE) for at, p in pieces]
        heard_layout.append((self.buffer_start, audio.size / SAMPLE_RATE))
        heard = np.concatenate([context, audio]) if context.size else audio
        self._running.layout = heard_layout
        try:
            segments = self._decode_with(heard, pieces, heard_layout, closing, rescue, doubt, alone)
        finally:
            del self._running.layout
        kept = [s for s in segments if not (self.profile.no_speech_skip and guards.is_silent(s))]
        text = " ".join(s.text for s in kept)
        ratio = max((s.compression_ratio for s in kept), default=0.0)
        if kept and ratio > guards.COMPRESSION_RATIO_THRESHOLD:
            looped = sum(len(s.words) for s in kept)
            return _Hypothesis([], [], failed=True, removed=looped), heard_layout  # wait
        said = [w for s in kept for w in s.words if w.word.strip()]
        untimed = {i for a, b in guards.untimed_runs(said) for i in range(a, b)}
        # Words heard in the context (their middle before the buffer) were committed already.
        lead = context.size / SAMPLE_RATE
        at = self.buffer_start - lead
        words = [
            replace(w, start=max(w.start, lead) + at, end=w.end + at)
            for i, w in enumerate(said)
            if i not in untimed and self._buffers_word(said, i, lead)
        ]
        words.sort(key=lambda w: w.start)
        own = [s for s in kept if s.end > lead]
        first = own[0] if own else None
        hypothesis = _Hypothesis(
            words,
            [s.end + at for s in own],
            avg_logprob=float(np.mean([s.avg_logprob for s in kept])) if kept else 0.0,
            no_speech_prob=first.no_speech_prob if first else 0.0,
            compression_ratio=ratio if text else 0.0,
            own_logprob=float(np.mean([s.avg_logprob for s in own])) if own else None,
            removed=len(untimed),
        )
        return hypothesis, heard_layout

    def _buffers_word(self, said: Sequence[Word], i: int, lead: float) -> bool:
        """Is `said[i]` (timed in what a decode heard: `lead` seconds of context, then the
        buffer) the buffer's? Its middle says so, or (`LatencyProfile.straddle_s`) it reaches
        that far into the buffer and comes right after the last committed word, heard again
        in the context (so it is not that word, timed on into the buffer, nor a misheard copy of
        it)."""
        word = said[i]
        if (word.start + word.end) / 2 >= lead:
            return True
        reach = self.profile.straddle_s
        if reach <= 0 or i == 0 or not self._committed or word.end < lead + reach:
            return False
        return word_key(said[i - 1].word) == word_key(self._committed[-1].word)

    def _decode_with(
        self,
        heard: np.ndarray,
        pieces: Sequence[tuple[float, np.ndarray]],
        heard_layout: list[tuple[float, float]],
        closing: bool,
        rescue: bool,
        doubt: bool,
        alone: bool = False,
    ) -> list[Segment]:
        """Run the decoder this decode calls for on `heard` (context `pieces`, then the buffer)."""
        if rescue and self._rescue is not None:
            self.counters.rescues += 1
            return self._rescue(heard, "")
        if doubt and self._doubt is not None:
            return self._doubt(heard, self.options.initial_prompt)
        lead = sum(seconds for _, seconds in heard_layout[:-1])
        prompt = (
            self.options.initial_prompt
            if (pieces or alone) and not self.profile.context_prompt
            else self._prompt(heard_layout[0][0])
        )
        decode = self._closing if closing else self._decode
        prefix = self._context_prefix(lead, pieces[0][0]) if pieces else ""
        return decode(heard, prompt, prefix)

    def _commit(
        self, words: list[Word], hypothesis: _Hypothesis, end_of_utterance: bool
    ) -> list[Event]:
        if not words:
            return []
        words = self._cut_loops(words)
        if not words:
            return []
        self.commit_time = max(self.commit_time, words[-1].end)
        self._committed = (self._committed + words)[-20:]
        self._remember_prompt([(w.word, w.start) for w in words])
        segment = Segment(
            id=self.counters.finals,
            start=words[0].start,
            end=words[-1].end,
            text=_text(words),
            words=tuple(words),
            avg_logprob=hypothesis.avg_logprob,
            no_speech_prob=hypothesis.no_speech_prob,
            compression_ratio=hypothesis.compression_ratio,
        )
        self.counters.finals += 1
        self._last_interim = None  # the next interim result is sent even if its text repeats
        return [Final(segment, end_of_utterance)]

    def _cut_loops(self, words: list[Word]) -> list[Word]:
        context = self._loop_context
        drops = guards.find_loops(context + words)
        dropped: set[int] = set()
        for a, b in drops:
            dropped.update(i - len(context) for i in range(max(a, len(context)), b))
        if dropped:
            self.counters.removed += len(dropped)
            words = [w for i, w in enumerate(words) if i not in dropped]
        self._loop_context = (context + words)[
            -guards.MAX_PHRASE_WORDS * (guards.MAX_REPEATS + 1) :
        ]
        return words

    def _interim(self, rest: list[Word]) -> list[Event]:
        if not self.options.interim_results:
            return []
        text = _text(rest)
        start = rest[0].start if rest else self.commit_time
        end = rest[-1].end if rest else self.commit_time
        key = (text, round(start, 2), round(end, 2))
        if self._last_interim is not None and self._last_interim[0] == text:
            return []  # unchanged
        if self._last_interim is None and not text:
            return []  # nothing was shown, nothing to clear
        self._last_interim = key
        previous = self._history[-1] if self._history else []
        self.counters.interims += 1
        return [Interim(text, stability(rest, previous), start, end)]

    def _context_prefix(self, lead: float, since: float) -> str:
        """The transcript of the context, for a decode that hears it (`context_prefix`): the
        committed words said in it (from `since`, where what it hears starts), then a segment
        end and start at `lead` (where the buffer begins in what the decoder hears) in
        Whisper's 20 ms timestamp tokens."""
        if not self.profile.context_prefix:
            return ""
        said = [w for w, start in self._prompt_words if since <= start < self.buffer_start]
        if not said:
            return ""
        mark = timestamp_token(lead)
        return " ".join(said) + mark + mark

    def _remember_prompt(self, words: Sequence[tuple[str, float]]) -> None:
        self._prompt_words.extend(words)

    def _prompt(self, heard_from: float) -> str:
        """The last `PROMPT_CHARS` of committed text said before `heard_from`, the start of
        what the decoder hears (committed words in the buffer or the context are heard again)."""
        chosen: list[str] = []
        size = 0
        for word, start in reversed(self._prompt_words):
            if start >= heard_from:
                continue
            if chosen and size + len(word) + 1 > PROMPT_CHARS:
                break
            chosen.append(word)
            size += len(word) + 1
        return " ".join(reversed(chosen))


# -- feeding a session from another thread ---------------------------------------------------


class Inbox:
    """Audio handed from the thread reading the request stream to the decoding loop."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: list[np.ndarray] = []
        self._ended = False
        self._error: BaseException | None = None
        self._cancelled = False
        self.last_arrival = time.monotonic()

    def put(self, samples: np.ndarray) -> None:
        with self._cond:
            self._chunks.append(samples)
            self.last_arrival = time.monotonic()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def take(self, idle_timeout_s: float) -> tuple[list[np.ndarray], bool]:
        """Everything that arrived (waiting for at least one chunk or the end); whether it ended.

        Raises `Cancelled` once the caller went away, the reader's error, and `UploadStalled`
        when nothing arrived for `idle_timeout_s` (0 = wait forever).
        """
        with self._cond:
            while True:
                if self._cancelled:
                    raise Cancelled("the caller cancelled the streaming session")
                if self._error is not None:
                    raise self._error
                if self._chunks or self._ended:
                    chunks, self._chunks = self._chunks, []
                    return chunks, self._ended
                waited = time.monotonic() - self.last_arrival
                if idle_timeout_s > 0 and waited >= idle_timeout_s:
                    raise UploadStalled(
                        f"no audio arrived for {idle_timeout_s:g} s, so the streaming session was "
                        "closed; keep sending audio (silence too) while the session is open, or "
                        "close the stream to end it",
                        metadata={"idle_timeout_seconds": f"{idle_timeout_s:g}"},
                    )
                self._cond.wait(None if idle_timeout_s <= 0 else idle_timeout_s - waited)


@dataclass
class Emitted:
    """An event and when the audio it ends at had arrived (wall clock), for latency metrics."""

    event: Event
    audio_arrived_at: float | None = None


def drive(
    session: StreamingSession,
    inbox: Inbox,
    idle_timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Emitted]:
    """Run a session from an inbox until the stream ends; yields events as they are made.

    Audio that arrived while a step was decoding is taken all at once, so a session that falls
    behind catches up instead of decoding every stale step.
    """
    arrivals: deque[tuple[float, float]] = deque()  # (audio received up to, wall time)
    ended = False
    while not ended:
        chunks, ended = inbox.take(idle_timeout_s)
        for chunk in chunks:
            session.push(chunk)
        if chunks:
            arrivals.append((session.received_s, clock()))
        if ended:
            break
        if session.due():
            for event in session.step():
                yield Emitted(event, _arrival(arrivals, event))
            while len(arrivals) > 1 and arrivals[1][0] <= session.commit_time:
                arrivals.popleft()
    for event in session.finish():
        yield Emitted(event, _arrival(arrivals, event))


def _arrival(arrivals: deque[tuple[float, float]], event: Event) -> float | None:
    if not isinstance(event, Final):
        return None
    for upto, at in arrivals:
        if upto >= event.segment.end - 1e-6:
            return at
    return arrivals[-1][1] if arrivals else None


# -- capacity --------------------------------------------------------------------------------


class SessionLimiter:
    """At most `limit` sessions at once on this replica; beyond it `Overloaded`
    (RESOURCE_EXHAUSTED)."""

    def __init__(
        self, limit: int, on_change: Callable[[int], None] | None = None, retry_after_s: float = 5.0
    ):
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda active: None)
        self._retry_after_s = retry_after_s

    def __enter__(self) -> SessionLimiter:
        with self._lock:
            if self.active >= self.limit:
                raise Overloaded(
                    f"this replica already runs its maximum of {self.limit} streaming sessions; "
                    "retry later or on another replica",
                    retry_after_s=self._retry_after_s,
                    metadata={"active_sessions": str(self.active), "limit": str(self.limit)},
                )
            self.active += 1
            self._on_change(self.active)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.active -= 1
            self._on_change(self.active)


# -- the real decoder and VAD ----------------------------------------------------------------


@dataclass
class WhisperDecoder:
    """Decodes with a loaded faster-whisper model (the registry's shared instance)."""

    model: Any
    """A faster_whisper.WhisperModel (untyped library; Any keeps the import lazy)."""
    language: str | None
    beam_size: int
    temperatures: tuple[float, ...] = (0.0,)
    calls: int = field(default=0)

    context_pad_s: float = 0.0
    """0: Whisper's encoder hears its full 30 s window (the buffer padded with silence), as in
    batch. Above 0: only the buffer plus this much padding (`audio_context`)."""

    no_speech_threshold: float | None = guards.NO_SPEECH_THRESHOLD
    """faster-whisper's: a window more likely silent than this (and improbable) gives no words;
    None: never (`LatencyProfile.no_speech_skip` off)."""

    more: dict[str, Any] = field(default_factory=dict)
    """Further faster-whisper `transcribe` options (experiments: `utterance_context.py`)."""

    def __call__(self, audio: np.ndarray, prompt: str, prefix: str = "") -> list[Segment]:
        from asr_mesh.services.transcription.core import to_segment

        self.calls += 1
        model = self.model
        if self.context_pad_s > 0:
            model = short_context(
                model, audio_context(audio.size / SAMPLE_RATE, self.context_pad_s)
            )
        segments, _info = model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            best_of=1,
            temperature=list(self.temperatures),
            word_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            prefix=prefix or None,
            no_speech_threshold=self.no_speech_threshold,
            **self.more,
            max_new_tokens=token_budget(
                max_new_tokens(audio.size / SAMPLE_RATE),
                *(count_tokens(model, text) for text in (prompt, prefix)),
            ),
        )
        return [to_segment(i, s) for i, s in enumerate(segments)]


def no_speech_threshold(profile: LatencyProfile) -> float | None:
    """The no-speech threshold of a session's decodes (`LatencyProfile.no_speech_skip`)."""
    return guards.NO_SPEECH_THRESHOLD if profile.no_speech_skip else None


def grid_decoder(
    model: Any, language: str | None, profile: LatencyProfile, beam_model: Any = None
) -> WhisperDecoder:
    """The decoder of a session's step decodes (`StreamingSession(decoder=...)`): the profile's
    `beam_size` (on `beam_model` when a beam search and given), its short encoder context."""
    return WhisperDecoder(
        beam_model if profile.beam_size > 1 and beam_model is not None else model,
        language,
        profile.beam_size,
        context_pad_s=profile.context_pad_s,
        no_speech_threshold=no_speech_threshold(profile),
    )


def closing_decoder(
    model: Any, language: str | None, profile: LatencyProfile, beam_model: Any = None
) -> WhisperDecoder:
    """The decoder of a session's closing decodes (`StreamingSession(closing=...)`): the
    profile's `closing_beam_size` (or `beam_size`), the same short encoder context. A beam
    search runs on `beam_model` when given (the service's model instance for beam-search
    decodes, see `TranscriptionSettings.stream_beam_threads`), a greedy decode on `model`."""
    beam = profile.closing_beam_size or profile.beam_size
    return WhisperDecoder(
        beam_model if beam > 1 and beam_model is not None else model,
        language,
        beam,
        context_pad_s=profile.context_pad_s,
        no_speech_threshold=no_speech_threshold(profile),
    )


RESCUE_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
RESCUE_BEAM_SIZE = 5


def doubt_decoder(
    model: Any, language: str | None, profile: LatencyProfile
) -> WhisperDecoder | None:
    """The decoder that decodes a doubtful closing decode again (`StreamingSession(doubt=...)`):
    beam `doubt_beam_size`, the same short encoder context; None when the profile never does."""
    if profile.doubt_logprob is None:
        return None
    return WhisperDecoder(
        model,
        language,
        profile.doubt_beam_size,
        context_pad_s=profile.context_pad_s,
        no_speech_threshold=no_speech_threshold(profile),
    )


def rescue_decoder(model: Any, language: str | None) -> WhisperDecoder:
    """The careful decode `StreamingSession` falls back on when an utterance's final decode
    looped: batch's settings (full 30 s encoder context, beam 5, temperature fallback), no
    prompt (a garbled prompt is a common cause of the loop)."""
    return WhisperDecoder(
        model, language, RESCUE_BEAM_SIZE, temperatures=RESCUE_TEMPERATURES, context_pad_s=0.0
    )


TOKENS_PER_S = 12
"""Most tokens a second of speech takes (fast Portuguese: ~4 words/s, ~2 tokens a word, plus
timestamps), with room to spare."""


def max_new_tokens(audio_s: float) -> int:
    """Token budget of one decode of `audio_s` seconds. A decode that loops (Whisper repeating a
    phrase, common on a buffer cut mid-word) would run to the model's 448 tokens, seconds of
    CPU, only to be thrown away by the compression-ratio guard; real speech never needs this
    many. `token_budget` lowers it where the prompt and prefix leave less room."""
    return min(220, int(TOKENS_PER_S * audio_s) + 20)


WHISPER_MAX_TOKENS = 448
"""Whisper's decoder length: prompt, start tokens, prefix and new tokens together."""
_START_TOKENS = 3
"""<|startoftranscript|>, the language, the task."""


def timestamp_token(seconds: float) -> str:
    """Whisper's timestamp token for `seconds` (20 ms steps), as text faster-whisper's
    tokenizer turns into that token inside a prompt or prefix."""
    return f"<|{round(seconds / 0.02) * 0.02:.2f}|>"


def count_tokens(model: Any, text: str) -> int:
    """Tokens `text` takes as faster-whisper's prompt or prefix (0 for no text)."""
    if not text.strip():
        return 0
    return len(model.hf_tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids)


def token_budget(wanted: int, prompt_tokens: int, prefix_tokens: int) -> int:
    """`wanted` new tokens, fewer if the prompt and prefix leave less of Whisper's 448 (a
    caller's initial prompt may take up to 223 of them, faster-whisper's cap; a request over
    448 is refused by faster-whisper with an error). Each of the two takes one more token
    (<|startofprev|>, <|0.00|>) and at most 223."""
    cap = WHISPER_MAX_TOKENS // 2 - 1
    used = _START_TOKENS + sum(min(n, cap) + 1 for n in (prompt_tokens, prefix_tokens) if n)
    return max(1, min(wanted, WHISPER_MAX_TOKENS - used))


FULL_CONTEXT_FRAMES = 3000
"""Whisper's encoder input: 30 s of 10 ms mel frames."""
WORDLESS_BOUND_SAMPLES = FULL_CONTEXT_FRAMES * SAMPLE_RATE // 100
"""A buffer that gave no word is cut back once it is this long (Whisper's 30 s window)."""


def audio_context(audio_s: float, pad_s: float) -> int:
    """Mel frames the encoder hears for `audio_s` of buffer: the buffer, `pad_s` of silence
    after it, rounded up to whole seconds (an even number of frames, which the encoder's
    stride-2 convolution needs), at most Whisper's 30 s."""
    seconds = int(np.ceil(audio_s + pad_s - 1e-9))
    return min(FULL_CONTEXT_FRAMES, max(2, seconds) * 100)


def short_context(model: Any, frames: int) -> Any:
    """A shallow copy of a faster-whisper `WhisperModel` whose encoder hears only the first
    `frames` mel frames instead of the padded 30 s window (whisper.cpp's `audio_ctx`).

    Why: the encoder's cost is fixed by its input, not by the audio in it, and grows faster
    than linearly with it (self-attention): on 2 CPU cores whisper base spends ~1.9 CPU-s
    encoding 30 s, ~0.4 CPU-s encoding 10 s. A streaming buffer is a few seconds long, so
    most of a full-window decode is spent on padding. The copy shares the loaded model (no
    memory); the decoder and the word aligner work on the shorter encoder output unchanged."""
    if frames >= FULL_CONTEXT_FRAMES:
        return model
    import copy

    clone = copy.copy(model)
    encode = model.encode

    def short_encode(features: np.ndarray) -> object:
        return encode(np.ascontiguousarray(features[..., :frames]))

    clone.encode = short_encode
    return clone


def silero_vad(threshold: float = 0.5, pad_s: float = 0.05) -> VadFn:
    """Silero VAD from faster-whisper, with short silences so utterance ends are precise."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        threshold=threshold,
        min_silence_duration_ms=100,
        speech_pad_ms=int(pad_s * 1000),
        min_speech_duration_ms=100,
    )

    def detect(audio: np.ndarray) -> list[tuple[float, float]]:
        if audio.size < SAMPLE_RATE // 10:
            return []
        found = get_speech_timestamps(audio, options)
        return [(t["start"] / SAMPLE_RATE, t["end"] / SAMPLE_RATE) for t in found]

    return detect
