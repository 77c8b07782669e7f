"""The streaming trace tool, end to end with the real model on a short corpus clip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.metrics import wer

REPO = Path(__file__).resolve().parents[2]
COST = "1:0.21,2:0.26,4:0.41,8:0.80,13:1.23,25:4.47"


def trace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "trace_stream.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.models
def test_every_decode_and_final_is_printed_with_a_wer(corpus, manifest):
    clip = manifest["asr"][0]
    proc = trace(
        str(corpus / clip["audio"]), "--cost-model", COST, "--words", "--reference", clip["text"]
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    decodes = [line for line in lines if line.lstrip().startswith(("interim ", "closing "))]
    finals = [line for line in lines if line.startswith("FINAL")]
    assert decodes and any(line.lstrip().startswith("closing") for line in decodes)
    assert finals and "bom dia" in " ".join(finals).lower()
    assert any("[" in line and "-" in line for line in lines if line.startswith("        "))
    said = " ".join(line.split(" | ", 1)[1] for line in finals)
    assert [line for line in lines if line.startswith("WER ")] == [
        f"WER {wer([clip['text']], [said]):.1%}"
    ]


def test_a_missing_file_is_one_readable_line(tmp_path):
    proc = trace(str(tmp_path / "nothing.wav"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no such file: {tmp_path / 'nothing.wav'}"


def test_a_file_ffmpeg_cannot_read_is_one_readable_line(corpus):
    proc = trace(str(corpus / "bad" / "text.wav"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ffmpeg could not read ")


def test_a_file_without_audio_is_one_readable_line(corpus):
    proc = trace(str(corpus / "bad" / "video_no_audio.mp4"))
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: ")


@pytest.mark.models
def test_a_profile_with_fields_changed_is_traced_with_them(corpus, manifest):
    conv = manifest["dia"][1]
    proc = trace(
        str(corpus / conv["audio"]),
        "--profile",
        "balanced:context_prefix=1,closing_beam_size=2",
        "--cost-model",
        COST,
    )
    assert proc.returncode == 0, proc.stderr
    closing = [line for line in proc.stdout.splitlines() if line.lstrip().startswith("closing ")]
    assert closing and all("CPU-s" in line for line in closing)
    assert any("prefix …" in line for line in closing)  # heard the context, given its words
    proc = trace(str(corpus / conv["audio"]), "--profile", "balanced", "--cost-model", COST)
    closing = [line for line in proc.stdout.splitlines() if line.lstrip().startswith("closing ")]
    assert closing and not any("prefix …" in line for line in closing)  # the profile's: off


@pytest.mark.parametrize("profile", ["fastest", "balanced:no_such_field=1"])
def test_an_unknown_profile_or_field_is_one_readable_line(corpus, manifest, profile):
    proc = trace(str(corpus / manifest["asr"][0]["audio"]), "--profile", profile)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --profile {profile!r}")
