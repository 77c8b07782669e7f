"""The gateway's side of the preprocess contract: options in, media report and estimate out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_mesh.client.cli import _media_line
from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
from asr_mesh.services.common.domain import MediaReport
from asr_mesh.services.gateway.downstream import Deadlines, Downstream, GrpcStages
from asr_mesh.services.gateway.pipeline import ChainOptions, Merged, Transcript
from asr_mesh.services.gateway.server import GatewaySettings
from asr_mesh.services.gateway.server import create_server as gateway_server
from asr_mesh.services.gateway.servicer import chain_options
from asr_mesh.services.preprocess.server import PreprocessSettings, create_server

pytestmark = pytest.mark.grpc


def test_unset_options_take_the_measured_defaults_and_explicit_ones_win():
    default = chain_options(TranscribeOptions().to_proto("a.wav"))
    audio = default.recognition.audio
    assert (audio.loudness_normalization, audio.trim_silence) == (False, False)
    chosen = chain_options(
        TranscribeOptions(loudness_normalization=True, trim_silence=True).to_proto("a.wav")
    )
    audio = chosen.recognition.audio
    assert (audio.loudness_normalization, audio.trim_silence) == (True, True)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    handle = create_server(
        PreprocessSettings(port=0, temp_dir=tmp_path_factory.mktemp("spool"), estimate_rtf=0.5)
    )
    unused = "127.0.0.1:9"
    downstream = Downstream(handle.address, unused, unused, unused)
    yield lambda: GrpcStages(downstream, Deadlines())
    downstream.close()
    handle.stop(0)


def _decode(stages, path: Path, **options):
    seen = []
    decoded = stages().preprocess(path, ChainOptions.of(filename=path.name, **options), seen.append)
    return decoded, next(e for e in seen if isinstance(e, MediaReport))


def test_the_estimate_reaches_the_gateway_and_the_options_reach_preprocess(stages, corpus):
    quiet = corpus / "media/clip_quiet.wav"
    plain, report = _decode(stages, quiet, loudness_normalization=False)
    assert report.estimated_processing == pytest.approx(report.duration * 0.5, abs=1e-3)
    loud, _ = _decode(stages, quiet, loudness_normalization=True)

    def rms(pcm: bytes) -> float:
        return float(np.sqrt(np.mean(np.frombuffer(pcm, "<i2").astype(np.float64) ** 2)))

    assert rms(loud.pcm) > 4 * rms(plain.pcm)
    trimmed, _ = _decode(
        stages, corpus / "asr/000.flac", loudness_normalization=False, trim_silence=True
    )
    untrimmed, _ = _decode(stages, corpus / "asr/000.flac", loudness_normalization=False)
    assert trimmed.duration < untrimmed.duration


class PreprocessOnly(GrpcStages):
    """The real preprocess hop; transcription and merge answer at once."""

    def transcribe(self, pcm, options, progress):
        return Transcript([], "pt-BR", "fake")

    def merge(self, transcript, diarization, options, duration, trace_id):
        return Merged([], [], [])


def test_the_cli_shows_the_estimate_the_gateway_passes_on(tmp_path, corpus):
    preprocess = create_server(
        PreprocessSettings(port=0, temp_dir=tmp_path / "pre", estimate_rtf=0.5)
    )
    unused = "127.0.0.1:9"
    downstream = Downstream(preprocess.address, unused, unused, unused)
    gateway = gateway_server(
        GatewaySettings(port=0, spool_dir=tmp_path),
        stages_factory=lambda: PreprocessOnly(downstream, Deadlines()),
    )
    try:
        events = []
        with GatewayClient(gateway.address) as client:
            client.transcribe(
                corpus / "asr/000.flac", TranscribeOptions(), on_event=events.append, timeout_s=30
            )
        info = next(e.media_info for e in events if e.WhichOneof("payload") == "media_info")
        assert info.HasField("estimated_processing") and info.codec == "flac"
        line = _media_line(Path("000.flac"), info)
        assert line == "000.flac: 5.3 s of flac in flac, 16000 Hz, 1 ch; estimated processing ≈ 3 s"
    finally:
        gateway.stop(0)
        downstream.close()
        preprocess.stop(0)
