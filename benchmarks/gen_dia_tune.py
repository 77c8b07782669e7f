#!/usr/bin/env python
"""More *tune* conversations for choosing diarization defaults: new seeds, new voice mixes.

    .venv/bin/python benchmarks/gen_dia_tune.py build/dia-tune-extra [--count 24] [--jobs 1]

The validation corpus (`benchmarks/gen_validate.py`) has only 11 tune conversations, too few
to choose a speaker-count method without fitting them. This makes `--count` more, with the
same templates (`gen_validate.CONVERSATIONS`, cycled) and the same synthesis, but new seeds
and new speakers: random two-style Kokoro blends with random weights, pitch/tempo variants
of the tune voices, never a voice of the validate split. Sentences come from the tune split.
Utterances already synthesised for build/corpus-validate are reused when `.cache` there exists
(linked). Writes OUT/dia/*.flac|rttm and OUT/manifest.json (`dia` entries, `split` = "tune").
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gen")]

from benchmarks import gen_validate as gv  # noqa: E402
from benchmarks import sentences_validate  # noqa: E402


def tune_voices(rng: random.Random, count: int) -> list[str]:
    """`count` new speakers: blends of two Kokoro styles and variants of tune voices."""
    held_out = set(gv.VOICES["validate"])
    base = gv.VOICES["shared"] + gv.VOICES["tune"]
    out: list[str] = []
    while len(out) < count:
        roll = rng.random()
        if roll < 0.45:
            a, b = rng.sample(gv.KOKORO_STYLES, 2)
            w = rng.choice([0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
            voice = f"kokoro:{a}*{w}+{b}*{round(1 - w, 1)}"
        elif roll < 0.8:
            parent = rng.choice([v for v in base if "~" not in v])
            voice = parent + rng.choice(["~p-3", "~p-1", "~p+1", "~p+3", "~t0.9", "~t1.1"])
        else:
            voice = rng.choice(base)
        if voice not in held_out and not any(same_speaker(voice, v) for v in out):
            out.append(voice)
    return out


def same_speaker(a: str, b: str) -> bool:
    """Two specs of one speaker: the same voice with at most a tempo change or a pitch shift
    under 2 semitones (speed does not change who speaks)."""
    base_a, *mods_a = a.split("~")
    base_b, *mods_b = b.split("~")
    if base_a != base_b:
        return False
    pitch_a = sum(float(m[1:]) for m in mods_a if m.startswith("p"))
    pitch_b = sum(float(m[1:]) for m in mods_b if m.startswith("p"))
    return abs(pitch_a - pitch_b) < 2


def plan(count: int) -> list[dict]:
    sentences = sentences_validate.split_sentences()["tune"]
    texts = [t for _, t in sentences]
    babble = texts[:12]
    specs = []
    for c in range(count):
        name, desc, n, turns, gaps, bc, short, overlaps, cond = gv.CONVERSATIONS[
            c % len(gv.CONVERSATIONS)
        ]
        crng = random.Random(f"dia-tune-extra-{c}")
        voices = tune_voices(crng, n)
        if name.startswith("similar_pair"):
            # a speaker beside a pitch-shifted copy of itself (and, for "plus", a third voice)
            first = voices[0].split("~")[0]
            voices[0] = first
            voices[1] = first + crng.choice(["~p+2", "~p-2", "~p+3", "~p-3"])
        clip_voice = {t: voices[i % len(voices)] for i, t in enumerate(texts)}
        shuffled = list(texts)
        crng.shuffle(shuffled)
        specs.append(
            {
                "name": f"tunex_{c:02d}_{name}",
                "split": "tune",
                "description": desc,
                "voices": voices,
                "gaps": gaps,
                "overlaps": overlaps,
                "condition": cond,
                "backchannels": sentences_validate.BACKCHANNELS["tune"],
                "babble_texts": babble,
                "turns": gv.script(
                    crng,
                    voices,
                    turns,
                    bc,
                    short,
                    shuffled,
                    clip_voice,
                    sentences_validate.BACKCHANNELS["tune"],
                ),
            }
        )
    return specs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--tools", type=Path, default=REPO.parent / "shared" / "tools")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared_cache = REPO / "build" / "corpus-validate" / ".cache"
    if shared_cache.is_dir() and not (out / ".cache").exists():
        (out / ".cache").symlink_to(shared_cache)
    gv.init_worker(str(args.tools.resolve()), str(out), max(1, args.jobs))
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"dia": []}
    done = {Path(e["audio"]).stem for e in manifest["dia"]}
    for spec in plan(args.count):
        if spec["name"] in done:
            continue
        entry = gv.make_conversation(spec)
        manifest["dia"].append(entry)
        manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        print(
            f"{entry['audio']} {entry['duration_s']:.1f} s {entry['speakers']} speakers {entry['voices']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
