"""Typed settings: thread headroom for queued servers, readable errors at startup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from asr_mesh.services.diarization.server import DiarizationSettings
from asr_mesh.services.transcription.server import TranscriptionSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("settings_type", [TranscriptionSettings, DiarizationSettings])
def test_defaults_leave_threads_for_refusals_and_health_checks(settings_type):
    settings = settings_type()
    assert settings.max_workers >= settings.num_workers + settings.max_queued + 2


def test_a_pool_smaller_than_admitted_work_is_refused():
    with pytest.raises(ValidationError, match=r"max_workers \(4\) must be at least .* \(7\)"):
        TranscriptionSettings(max_workers=4, num_workers=1, max_queued=4)


def test_bad_environment_is_one_line_per_problem_and_exit_2():
    env = {**os.environ, "ASR_MERGE_PORT": "not-a-port", "ASR_MERGE_HOST": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "-m", "asr_mesh.services.merge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[0].startswith("merge: invalid configuration: port:")
