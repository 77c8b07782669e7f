"""Where streaming finals lose accuracy: each utterance decoded alone vs after earlier speech.

    python benchmarks/utterance_context.py [--corpus build/corpus-validate] [--split tune]
        [--only tune_00,tune_01] "ctx=0,pad=1;ctx=10,pad=1,squeeze=1;ctx=0,pad=0,beam=5,fallback=1"

Not a streaming run: an upper bound of what a decoder policy can do. The conversations of a
split are cut into utterances the way the streaming session ends them (silero VAD as
`streaming.silero_vad`, pauses of 0.5 s or more, at most 15 s), and each utterance is decoded
once, with whisper base through `streaming.WhisperDecoder`, by each configuration
(`key=value` pairs, `;` between configurations):

- `ctx`: seconds of audio before the utterance that the decoder also hears (0: the utterance
  alone, from 0.1 s before VAD's start); only the words whose middle lies in the utterance
  (after the middle of the pause before it) are kept;
- `squeeze=1`: of that audio, only VAD's speech (each range ± `spad` s, default 0.1) is heard,
  pauses removed, as the streaming context (`LatencyProfile.context_s`) does;
- `pad`: encoder context padding (`WhisperDecoder.context_pad_s`; 0 = Whisper's 30 s window);
- `beam`, `fallback=1` (temperature fallback), `prompt=0` (no committed text as prompt),
  `nots=1` (Whisper's no-timestamps mode: one segment, words timed by alignment alone),
  `patience` (beam search patience);
- `pmin`: only the committed words whose probability is at least this go into the prompt;
- `future`: seconds of the speech after the utterance the decoder also hears (an upper bound:
  a streaming final cannot wait for it);
- `acoustic=1` (with `ctx`): the encoder hears the context before the utterance, but the
  decoder is shown only the encoder's output from the utterance's start (`lead` s earlier
  with `lead=S`), so it transcribes the utterance alone, after acoustic context only: a
  cheaper closing decode if the context helps by what the encoder hears (it did not);
- `second=S` (with `ctx`): each utterance is also decoded after only the last S seconds of
  that context, and of the two transcripts the one whose utterance words have the higher mean
  log-probability is kept (`streaming.confidence`; `LatencyProfile.second_context_s`);
  `sprompt=1`/`0`: that second decode with/without the committed text as prompt;
- `prefix=1`: the words already taken from the context are given to the decoder as the start
  of its transcript (`WhisperDecoder`'s `prefix`, closed by timestamp tokens at the
  utterance's start), so it does not transcribe the context again
  (`LatencyProfile.context_prefix`).

Prints the WER of the concatenated utterances per configuration against the reference, with
plain faster-whisper on the whole file (beam 5, VAD; cached in out/) beside it. Used to choose
`accurate`'s context (see the PROFILES docstring): run it on `tune`, never tune on `validate`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen"), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import bench_streaming as bench  # noqa: E402

from asr_mesh.services.transcription import streaming as st  # noqa: E402
from support.metrics import wer  # noqa: E402

SR = 16000


def utterances(ranges, gap: float = 0.5, cap: float = 15.0) -> list[tuple[float, float]]:
    """VAD ranges joined across pauses shorter than `gap`, at most `cap` seconds each."""
    out: list[tuple[float, float]] = []
    for a, b in ranges:
        if out and a - out[-1][1] < gap and b - out[-1][0] <= cap:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def heard(audio, ranges, lo: float, end: float, squeeze: bool, spad: float):
    """The audio from `lo` to `end` (only its speech with `squeeze`) and a map from a time in
    it to a time in the file."""
    if not squeeze:
        return audio[int(lo * SR) : int(end * SR)], lambda t: lo + t, lambda t: t - lo
    pieces, spans, pos = [], [], 0.0
    for ra, rb in ranges:
        if rb < lo or ra > end:
            continue
        ra, rb = max(ra - spad, lo, 0.0), min(rb + spad, end)
        if spans and ra < spans[-1][1]:
            ra = spans[-1][1]
        if rb <= ra:
            continue
        pieces.append(audio[int(ra * SR) : int(rb * SR)])
        spans.append((ra, rb, pos))
        pos += rb - ra

    def to_file(t: float) -> float:
        for ra, rb, p in spans:
            if t <= p + (rb - ra):
                return ra + (t - p)
        return spans[-1][1]

    def to_heard(t: float) -> float:
        for ra, rb, p in spans:
            if t <= rb:
                return p + max(0.0, t - ra)
        return pos

    return np.concatenate(pieces), to_file, to_heard


def acoustic_context(model, context_mel: np.ndarray):
    """A shallow copy of a faster-whisper `WhisperModel` whose encoder hears `context_mel`
    (mel frames, an even number) before the features it is given, and whose encoder output
    starts where those features start: the decoder transcribes only the new audio, heard
    after the context."""
    import copy

    import ctranslate2

    frames = context_mel.shape[-1]
    if frames == 0:
        return model
    clone = copy.copy(model)

    def encode(features: np.ndarray):
        before = context_mel if features.ndim == 2 else context_mel[None]
        joined = np.concatenate([before, features[..., : st.FULL_CONTEXT_FRAMES - frames]], -1)
        output = np.asarray(model.encode(np.ascontiguousarray(joined)))
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(output[:, frames // 2 :]))

    clone.encode = encode
    return clone


CRITERIA = {
    "mean": lambda lp: float(np.mean(lp)),
    "min": lambda lp: float(np.min(lp)),
    "median": lambda lp: float(np.median(lp)),
    "sum": lambda lp: float(np.sum(lp)),
    "sum+1n": lambda lp: float(np.sum(lp)) + len(lp),
    "first": lambda lp: 0.0,
}
"""With `second` and `--criteria`: other rules for choosing between the two decodes, scored on
the same decodes (over `streaming.word_log_probabilities` of each transcript: "mean" is
`streaming.confidence`; "first" always keeps the decode after the full context). The
prompt of later utterances follows `streaming.confidence`'s choice, so with a prompt they are
approximate."""


def choose(criterion: str, candidates) -> int:
    """Which of `candidates` (`decode_utterance` results) `criterion` keeps (ties: the first)."""
    scores = []
    for c in candidates:
        logs = st.word_log_probabilities(c[2])
        scores.append(CRITERIA[criterion](logs) if logs else float("-inf"))
    return max(range(len(scores)), key=lambda k: (scores[k], -k))


def run(config: str, items, model, offline: dict[str, str], criteria=()) -> None:
    kv = dict(x.split("=") for x in config.split(","))
    ctx = float(kv.get("ctx", 0))
    choice = Choices.parse(kv)
    temperatures = st.RESCUE_TEMPERATURES if kv.get("fallback", "0") == "1" else (0.0,)
    decoder = st.WhisperDecoder(
        model,
        "pt",
        int(kv.get("beam", 1)),
        temperatures=temperatures,
        context_pad_s=float(kv.get("pad", 1)),
        more={
            **({"without_timestamps": True} if kv.get("nots", "0") == "1" else {}),
            **({"patience": float(kv["patience"])} if "patience" in kv else {}),
        },
    )
    vad = st.silero_vad()
    scores, plain, seconds = [], [], 0.0
    started = time.process_time()
    second = float(kv.get("second", 0))
    kept_second = decodes_second = 0
    first_only: list[float] = []  # with `second`: the WER of the first decode alone
    by_rule: dict[str, list[float]] = {c: [] for c in criteria}
    for item in items:
        audio = np.frombuffer(item.pcm, dtype="<i2").astype(np.float32) / 32768
        ranges = vad(audio)
        words: list[tuple[str, float, float]] = []
        first_words: list[str] = []
        rule_words: dict[str, list[str]] = {c: [] for c in criteria}
        previous_end = 0.0
        spans = utterances(ranges)
        for k, (a, b) in enumerate(spans):
            following = spans[k + 1][0] if k + 1 < len(spans) else b + 1.0
            contexts = [ctx, second] if second > 0 and ctx > 0 else [ctx]
            candidates = []
            for k_ctx, ctx_s in enumerate(contexts):
                chosen = choice.second() if k_ctx else choice
                candidates.append(
                    decode_utterance(
                        decoder,
                        model,
                        audio,
                        ranges,
                        words,
                        (a, b),
                        following,
                        previous_end,
                        ctx_s,
                        chosen,
                    )  # fmt: skip
                )
                seconds += candidates[-1][1]
            best = max(candidates, key=lambda c: st.confidence(c[2]))
            if len(candidates) > 1:
                decodes_second += 1
                kept_second += best is candidates[1]
            words.extend(best[0])
            for rule in criteria:
                rule_words[rule].extend(w for w, _, _ in candidates[choose(rule, candidates)][0])
            first_words.extend(w for w, _, _ in candidates[0][0])
            previous_end = b
        scores.append(wer([item.reference], [" ".join(w for w, _, _ in words)]))
        first_only.append(wer([item.reference], [" ".join(first_words)]))
        for rule in criteria:
            by_rule[rule].append(wer([item.reference], [" ".join(rule_words[rule])]))
        plain.append(wer([item.reference], [offline[item.name]]))
    print(
        f"{config:<44} WER {100 * np.mean(scores):5.1f}%  plain {100 * np.mean(plain):5.1f}%  "
        f"per input {[round(100 * x, 1) for x in scores]}  decoded {seconds:.0f} s  "
        f"CPU {time.process_time() - started:.0f} s"
        + (
            f"  second kept {kept_second} of {decodes_second}; the first alone "
            f"{100 * np.mean(first_only):.1f}%, per input {[round(100 * x, 1) for x in first_only]}"
            if decodes_second
            else ""
        ),
        flush=True,
    )
    for rule in criteria if decodes_second else ():
        print(
            f"    choosing by {rule:<8} WER {100 * np.mean(by_rule[rule]):5.1f}%  "
            f"per input {[round(100 * x, 1) for x in by_rule[rule]]}",
            flush=True,
        )


@dataclass(frozen=True)
class Choices:
    """A configuration's keys that shape each utterance's decode (see the module docstring)."""

    squeeze: bool
    spad: float
    use_prompt: bool
    pmin: float
    future: float
    use_prefix: bool
    acoustic: bool
    lead: float
    second_prompt: bool | None

    def second(self) -> Choices:
        """The choices of the `second` decode (`sprompt` changes them)."""
        return replace(
            self,
            use_prompt=self.use_prompt if self.second_prompt is None else self.second_prompt,
        )

    @classmethod
    def parse(cls, kv: dict[str, str]) -> Choices:
        return cls(
            squeeze=kv.get("squeeze", "0") == "1",
            spad=float(kv.get("spad", 0.1)),
            use_prompt=kv.get("prompt", "1") == "1",
            pmin=float(kv.get("pmin", 0)),
            future=float(kv.get("future", 0)),
            use_prefix=kv.get("prefix", "0") == "1",
            acoustic=kv.get("acoustic", "0") == "1",
            lead=float(kv.get("lead", 0)),
            second_prompt=None if "sprompt" not in kv else kv["sprompt"] == "1",
        )


def decode_utterance(
    decoder, model, audio, ranges, words, span, following, previous_end, ctx, choice: Choices
):
    """One decode of the utterance `span` after `ctx` s of context: its words as (word, start,
    probability), the seconds decoded, and its words as `Word`s (for `streaming.confidence`)."""
    from asr_mesh.services.common.domain import Word

    a, b = span
    lo = max(0.0, a - ctx if ctx > 0 else a - 0.1)
    end = b + choice.future if choice.future > 0 else b + 0.3
    clip, to_file, to_heard = heard(
        audio, ranges, lo, end, (choice.squeeze and ctx > 0) or choice.future > 0, choice.spad
    )
    said = " ".join(w for w, start, p in words if start < lo and p >= choice.pmin)
    prompt = said[-200:] if choice.use_prompt else ""
    prefix = ""
    if choice.use_prefix and ctx > 0:
        before = [w for w, start, _ in words if lo <= start < a]
        if before:
            mark = st.timestamp_token(to_heard(max(a - choice.spad, lo)))
            prefix = " ".join(before) + mark + mark
    shift = 0.0
    if choice.acoustic and ctx > 0:
        split = max(0.0, to_heard(max(a - 0.1, lo)) - choice.lead)
        k = 2 * int(split * 50)
        shift = k / 100
        mel = model.feature_extractor(clip)
        decoder.model = acoustic_context(model, mel[:, :k])
        clip = clip[k * 160 :]
    else:
        decoder.model = model
    found = []
    for segment in decoder(clip, prompt, prefix):
        if segment.compression_ratio > 2.4:
            continue
        for w in segment.words:
            middle = to_file(shift + (w.start + w.end) / 2)
            if (previous_end + a) / 2 <= middle < min(b + 0.5, (b + following) / 2):
                found.append((w.word.strip(), to_file(shift + w.start), w.probability))
    return found, clip.size / SR, [Word(0.0, 0.0, w, p) for w, _, p in found]


def base_model(threads: int = 2):
    """whisper base as the streaming service loads it on this machine (int8, 2 threads)."""
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(REPO / "models" / "whisper-base"),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
        local_files_only=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "configs", help='";"-separated configurations, e.g. "ctx=0;ctx=10,squeeze=1"'
    )
    parser.add_argument("--corpus", type=Path, default=REPO / "build" / "corpus-validate")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--only", default="", help="comma list: inputs whose name contains one")
    parser.add_argument(
        "--criteria",
        default="",
        help=f"with second=S: also score these rules for choosing ({', '.join(CRITERIA)})",
    )
    args = parser.parse_args()

    criteria = [c for c in args.criteria.split(",") if c]
    if unknown := [c for c in criteria if c not in CRITERIA]:
        parser.error(f"unknown criteria {', '.join(unknown)}; known: {', '.join(CRITERIA)}")
    only = [o for o in args.only.split(",") if o]
    items = [
        i
        for i in bench.inputs(args.corpus, args.split, 0, Path("/tmp"))
        if not only or any(o in i.name for o in only)
    ]
    model = base_model()
    offline = bench.offline_texts(model, items)
    for config in filter(None, args.configs.split(";")):
        run(config, items, model, offline, criteria)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
