"""The gateway's chain logic with fake stages (pure, fast)."""

from __future__ import annotations

import time

import pytest
from fakes import FakeStages

from asr_mesh.services.common.domain import MediaReport
from asr_mesh.services.common.errors import InvalidAudio
from asr_mesh.services.gateway.pipeline import ChainOptions, run_chain


@pytest.fixture()
def upload(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF....")
    return path


def test_chain_without_diarization_skips_it(upload):
    stages, events = FakeStages(), []
    result = run_chain(
        upload, ChainOptions.of(formats=("json", "srt")), stages, lambda s, e: events.append((s, e))
    )
    assert stages.calls == ["preprocess", "transcription", "merge"]
    assert result.diarization is None
    assert [d.format for d in result.merged.documents] == ["json", "srt"]
    assert any(isinstance(e, MediaReport) for _, e in events)
    assert [s for s, _ in events][-1] == "merge"


def test_transcription_and_diarization_run_in_parallel(upload):
    stages = FakeStages()
    result = run_chain(upload, ChainOptions.of(diarize=True), stages, lambda s, e: None)
    # The barrier in FakeStages only opens when both branches are inside at the same time.
    assert stages.threads["transcription"] != stages.threads["diarization"]
    assert result.diarization.backend == "fake"
    assert result.merged.speakers == ["SPEAKER_00"]


def test_failing_branch_cancels_the_other_and_raises(upload):
    stages = FakeStages(fail={"transcription": InvalidAudio("broken")}, slow_diarization_s=30)
    started = time.monotonic()
    with pytest.raises(InvalidAudio, match="broken"):
        run_chain(upload, ChainOptions.of(diarize=True), stages, lambda s, e: None)
    assert stages.cancelled.is_set()
    assert time.monotonic() - started < 10  # did not wait for the 30 s diarization
    assert "merge" not in stages.calls


def test_recording_id_is_the_file_stem():
    assert ChainOptions(filename="reunião final.mp3").recording_id == "reunião final"
    assert ChainOptions().recording_id == "recording"
