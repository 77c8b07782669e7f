"""benchmarks/gen_validate.py: the validation corpus (issue 11) is split, disjoint and well formed.

A smoke run (`--limit 1 --espeak-only`, espeak-ng voices, ~15 s) checks the files it writes; the
plan of the full corpus (pure, no synthesis) checks sizes, splits and held-out voices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
# ../shared/tools beside the corpus (a worktree elsewhere finds it through $ASR_CORPUS_DIR)
TOOLS = Path(
    os.environ.get("ASR_CORPUS_TOOLS")
    or Path(os.environ.get("ASR_CORPUS_DIR", REPO.parent / "shared" / "corpus-dev")).parent
    / "tools"
)
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

import gen_validate  # noqa: E402
import sentences_validate  # noqa: E402

needs_tools = pytest.mark.skipif(
    not (TOOLS / "gen_corpus.py").is_file(), reason="../shared/tools/gen_corpus.py not present"
)


def run_gen(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gen_validate.py"),
            str(out),
            "--tools",
            str(TOOLS),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    if not (TOOLS / "gen_corpus.py").is_file():
        pytest.skip("../shared/tools/gen_corpus.py not present")
    out = tmp_path_factory.mktemp("corpus-validate")
    proc = run_gen(out, "--limit", "1", "--espeak-only", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    return out


def parse_rttm(path: Path) -> list[tuple[float, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        f = line.split()
        assert len(f) == 10 and f[0] == "SPEAKER", line
        rows.append((float(f[3]), float(f[4]), f[7]))
    return rows


# ----- the full plan (no synthesis) --------------------------------------------------------
def test_sentences_are_new_and_enough():
    sys.path.insert(0, str(TOOLS))
    old: set[str] = set()
    if (TOOLS / "sentences_dev.py").is_file():
        import sentences_dev

        old |= set(sentences_dev.DEV)
    from benchmarks import gen_dia_hard

    old |= set(gen_dia_hard.EXTRA_SENTENCES) | set(gen_dia_hard.BACKCHANNELS)
    texts = [t for d in sentences_validate.DOMAINS.values() for t in d]
    assert len(texts) >= 220
    assert len(set(texts)) == len(texts)
    assert not set(texts) & old
    bc = sentences_validate.BACKCHANNELS
    assert not set(bc["tune"]) & set(bc["validate"])


def test_full_plan_sizes_splits_and_held_out_voices():
    specs = gen_validate.plan(None, espeak_only=False)
    by = {
        p: {s: [e for e in specs[p] if e["split"] == s] for s in ("tune", "validate")}
        for p in specs
    }
    assert len(specs["asr"]) >= 220
    assert abs(len(by["asr"]["tune"]) - len(by["asr"]["validate"])) <= 10
    assert len(specs["dia"]) >= 20 and len(by["dia"]["validate"]) >= 10
    assert (len(by["long"]["tune"]), len(by["long"]["validate"])) == (2, 3)
    assert all(2 <= len(c["voices"]) <= 6 for c in specs["dia"])
    assert {len(c["voices"]) for c in specs["dia"]} >= {2, 3, 4, 5, 6}

    # text disjoint between splits, in every part
    def texts(split):
        out = {e["text"] for e in by["asr"][split]}
        out |= {t for c in by["dia"][split] for _, _, t in c["turns"]}
        out |= {t for e in by["long"][split] for _, t in e["utterances"]}
        return out

    assert not texts("tune") & texts("validate")
    # held-out voices: validate-only voices never used in tune, and used in validate
    held_out = set(gen_validate.VOICES["validate"])

    def voices(split):
        out = {e["voice"] for e in by["asr"][split]}
        out |= {v for c in by["dia"][split] for v in c["voices"]}
        return out | {v for e in by["long"][split] for v, _ in e["utterances"]}

    assert not voices("tune") & held_out
    assert held_out <= voices("validate")
    # every Kokoro style, blends, pitch/tempo variants and espeak variants are there
    allv = voices("tune") | voices("validate")
    assert {f"kokoro:{s}" for s in gen_validate.KOKORO_STYLES} <= allv
    assert any("*" in v for v in allv) and any("~p" in v for v in allv)
    assert any("~t" in v for v in allv) and sum(v.startswith("espeak:") for v in allv) >= 8
    # conditions: clean, both noise levels, telephone, reverberation; backchannels in dia
    conds = {c for e in specs["asr"] for c in e["condition"].split("+")}
    assert {"clean", "white20", "white10", "pink10", "babble20", "phone", "reverb"} <= conds
    assert any(k == "backchannel" for c in specs["dia"] for _, k, _ in c["turns"])
    assert gen_validate.plan(None, espeak_only=False) == specs  # deterministic


# ----- conditions ------------------------------------------------------------------------
def test_conditions_do_what_they_say():
    rng = np.random.default_rng(0)
    t = np.arange(gen_validate.SR * 2) / gen_validate.SR
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(
        np.float32
    )
    # SNR against the speech, not diluted by the silence around it
    padded = np.concatenate([np.zeros(16000, np.float32), tone, np.zeros(16000, np.float32)])
    noise = gen_validate.add_noise(padded, "white", 10.0, rng, []) - padded
    snr = 10 * np.log10(
        np.mean(tone.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)
    )
    assert abs(snr - 10.0) < 0.3
    pink = gen_validate.add_noise(padded, "pink", 20.0, rng, []) - padded
    spec = np.abs(np.fft.rfft(pink)) ** 2
    f = np.fft.rfftfreq(len(pink), 1 / gen_validate.SR)
    assert spec[(f > 100) & (f < 500)].mean() > 10 * spec[(f > 4000) & (f < 7000)].mean()
    phone = gen_validate.telephone(tone)
    assert len(phone) == len(tone)
    spec = np.abs(np.fft.rfft(phone))
    f = np.fft.rfftfreq(len(phone), 1 / gen_validate.SR)
    assert spec[np.abs(f - 6000) < 5].max() < 0.01 * spec[np.abs(f - 1000) < 5].max()
    wet, rt60 = gen_validate.reverb(tone, rng)
    assert len(wet) == len(tone) and 0.3 <= rt60 <= 0.8
    assert not np.allclose(wet, tone)


# ----- the smoke run ---------------------------------------------------------------------
@needs_tools
def test_smoke_manifest_files_and_truth(smoke: Path):
    manifest = json.loads((smoke / "manifest.json").read_text(encoding="utf-8"))
    for part in ("asr", "dia", "long"):
        assert (smoke / f"READY-{part}").is_file()
        assert {e["split"] for e in manifest[part]} == {"tune", "validate"}, part
        for e in manifest[part]:
            info = sf.info(smoke / e["audio"])
            assert (info.samplerate, info.channels) == (16000, 1), e["audio"]
            assert abs(info.frames / 16000 - e["duration_s"]) < 0.01
            audio, _ = sf.read(smoke / e["audio"], dtype="float32")
            assert np.max(np.abs(audio)) > 0.01 and e["text"].strip()
    tune = {e["text"] for p in ("asr", "dia", "long") for e in manifest[p] if e["split"] == "tune"}
    val = {
        e["text"] for p in ("asr", "dia", "long") for e in manifest[p] if e["split"] == "validate"
    }
    assert not tune & val
    for e in manifest["asr"]:
        assert (smoke / e["audio"]).with_suffix(".txt").read_text(encoding="utf-8").strip() == e[
            "text"
        ]
        assert e["voice"] and e["condition"]
    for e in manifest["dia"]:
        rows = parse_rttm(smoke / e["rttm"])
        assert len({s for _, _, s in rows}) == e["speakers"] == len(e["voices"])
        assert all(d > 0 and s >= 0 and s + d <= e["duration_s"] + 1e-3 for s, d, _ in rows)
        # truth marks speech: the audio is louder inside the turns than in the gaps between them
        audio, sr = sf.read(smoke / e["audio"], dtype="float32")
        inside = np.zeros(len(audio), bool)
        for s, d, _ in rows:
            inside[int(s * sr) : int((s + d) * sr)] = True
        assert np.sqrt(np.mean(audio[inside] ** 2)) > 3 * np.sqrt(np.mean(audio[~inside] ** 2))
    for e in manifest["long"]:
        assert e["speech_s"] < e["duration_s"]
    table = run_gen(smoke, "--summary")
    assert table.returncode == 0, table.stderr
    assert "asr   validate      1" in table.stdout and "long  tune          1" in table.stdout


@needs_tools
def test_smoke_is_reproducible(smoke: Path, tmp_path: Path):
    proc = run_gen(tmp_path, "--limit", "1", "--espeak-only", "--only", "asr")
    assert proc.returncode == 0, proc.stderr
    first = json.loads((smoke / "manifest.json").read_text(encoding="utf-8"))["asr"]
    again = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert again["asr"] == first and again["dia"] == [] and not (tmp_path / "READY-dia").exists()
    for e in first:
        a, _ = sf.read(smoke / e["audio"], dtype="int16")
        b, _ = sf.read(tmp_path / e["audio"], dtype="int16")
        assert np.array_equal(a, b)


def test_bad_arguments_are_refused_in_one_line(tmp_path: Path):
    proc = run_gen(tmp_path / "c", "--tools", str(tmp_path))
    assert proc.returncode != 0 and "gen_corpus.py not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_gen(tmp_path / "c", "--jobs", "0")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
