"""The pyannote backend: offline loading from a local community-1-style directory, and errors.

The pipeline is a small random one built by `tiny_pyannote` (the real weights are out of reach):
these tests check that the real loading and running code works offline through the service,
not diarization quality.
"""

# Fixtures are imported from diarization_helpers, so their parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import shutil

import pytest
import yaml
from diarization_helpers import check_well_formed, conversations, tiny_pyannote_dir  # noqa: F401
from test_diarization_grpc import diarize, requests, to_pcm

from asr_mesh.services.common import convert
from asr_mesh.services.diarization.pyannote_backend import PipelineDirectoryError
from asr_mesh.services.diarization.server import DiarizationSettings, create_server

pytestmark = pytest.mark.models


@pytest.fixture()
def offline(monkeypatch):
    """Make any attempt to reach the model hub fail loudly instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYANNOTE_METRICS_ENABLED", "false")


@pytest.mark.grpc
def test_pyannote_pipeline_runs_offline_through_the_service(
    tiny_pyannote_dir, conversations, state_dir, offline
):
    handle = create_server(DiarizationSettings(port=0, pyannote_dir=tiny_pyannote_dir))
    try:
        _, audio, _, _ = conversations[0]
        audio = audio[: 12 * 16_000]
        progress, result = diarize(handle.port, requests(to_pcm(audio)))
        assert result.backend == "pyannote"
        turns = [convert.turn_from_proto(t) for t in result.exclusive_turns]
        check_well_formed(turns, 12.0)
        assert turns, "the tiny model is biased to always hear speaker #1"
        assert result.speaker_count >= 1
        assert any(p.message == "embeddings" for p in progress)
        _, forced = diarize(handle.port, requests(to_pcm(audio), num_speakers=2))
        check_well_formed([convert.turn_from_proto(t) for t in forced.exclusive_turns], 12.0)
        assert forced.speaker_count <= 2
    finally:
        handle.stop(0)


def test_missing_directory_fails_at_startup(tmp_path, state_dir):
    with pytest.raises(PipelineDirectoryError, match="does not exist"):
        create_server(DiarizationSettings(port=0, pyannote_dir=tmp_path / "nowhere"))


def test_incomplete_directory_names_what_is_missing(tiny_pyannote_dir, tmp_path, state_dir):
    broken = shutil.copytree(tiny_pyannote_dir, tmp_path / "broken")
    (broken / "plda" / "plda.npz").unlink()
    with pytest.raises(PipelineDirectoryError, match="plda/plda.npz"):
        create_server(DiarizationSettings(port=0, pyannote_dir=broken))


def test_unloadable_pipeline_is_reported(tiny_pyannote_dir, tmp_path, state_dir, offline):
    broken = shutil.copytree(tiny_pyannote_dir, tmp_path / "broken")
    (broken / "segmentation" / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineDirectoryError, match="does not load"):
        create_server(DiarizationSettings(port=0, pyannote_dir=broken))
    config = yaml.safe_load((tiny_pyannote_dir / "config.yaml").read_text())
    config["pipeline"]["name"] = "pyannote.audio.pipelines.VoiceActivityDetection"
    (broken / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(PipelineDirectoryError, match="not a SpeakerDiarization"):
        create_server(DiarizationSettings(port=0, pyannote_dir=broken))
