"""`asr stream` pieces that need no server: audio source and the text view."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from asr_mesh.client.stream_cli import CHUNK_BYTES, PcmSource, TextView
from asr_mesh.services.common.errors import InvalidInput

REPO = Path(__file__).resolve().parents[2]


def test_a_file_becomes_100_ms_pcm_chunks(corpus):
    source = PcmSource(str(corpus / "asr/000.flac"), realtime=False)
    chunks = list(source)
    assert source.error is None and source.sent_at is not None
    assert all(len(c) == CHUNK_BYTES for c in chunks[:-1]) and 0 < len(chunks[-1]) <= CHUNK_BYTES
    assert abs(sum(map(len, chunks)) / 32000 - 5.35) < 0.05


def test_missing_and_undecodable_files_are_refused(corpus, tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        PcmSource(str(tmp_path / "nope.wav"), realtime=False)
    source = PcmSource(str(corpus / "bad/text.wav"), realtime=False)
    assert list(source) == []
    assert "ffmpeg cannot decode it" in source.error.message


def test_text_view_prints_one_line_per_utterance_when_piped():
    out = io.StringIO()
    view = TextView(out, interactive=False)
    view.interim("bom")
    view.final("bom dia", False)
    view.interim("eu gost")
    view.final("eu gostaria", True)
    view.final("obrigado", True)
    assert out.getvalue() == "bom dia eu gostaria\nobrigado\n"


def test_text_view_rewrites_interim_text_in_place_on_a_terminal():
    out = io.StringIO()
    view = TextView(out, interactive=True)
    view.interim("bom")
    view.final("bom dia", True)
    assert (
        out.getvalue().startswith("\r")
        and "bom dia" in out.getvalue()
        and out.getvalue().endswith("\n")
    )


def test_stream_command_is_registered():
    proc = subprocess.run(
        [sys.executable, "-m", "asr_mesh.client.cli", "stream", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0 and "--realtime" in proc.stdout and "jsonl" in proc.stdout
