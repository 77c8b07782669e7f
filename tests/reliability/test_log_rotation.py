"""The local mesh's service logs are rotated with a size cap (a long-running mesh keeps a bounded disk)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asr_mesh.services.supervisor import pump_log

pytestmark = pytest.mark.reliability


def test_a_child_s_stderr_is_rotated_at_the_cap_keeping_n_generations(tmp_path):
    log = tmp_path / "transcription.log"
    # A child that logs ~600 KB, line by line, as a service does.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfor i in range(6000): print(f'line {i:05d} ' + 'x' * 90, file=sys.stderr)",
        ],
        stderr=subprocess.PIPE,
    )
    pump_log(child.stderr, log, max_bytes=100_000, backups=2)
    assert child.wait(10) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["transcription.log", "transcription.log.1", "transcription.log.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 100_000
    # The newest lines are in the live file, whole and in order; the oldest were dropped.
    lines = log.read_text().splitlines()
    assert lines[-1].startswith("line 05999 ")
    assert all(len(line) == 101 for line in lines)
    kept = (tmp_path / "transcription.log.2").read_text().splitlines()[0]
    assert int(kept.split()[1]) > 0
