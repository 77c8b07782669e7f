"""Fixtures for the HTTP front door's in-process tier.

A real gateway on port 0 whose preprocess and merge stages are the real services (started in
process, ffmpeg decoding, the real merge rendering), with only the model replaced: the
transcription stage returns a fixed transcript spread over the decoded audio. So uploads are
really decoded (a bad file fails in preprocess) and every document is rendered by merge.
"""

from __future__ import annotations

import io
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import Segment, SpeakerTurn, Word
from asr_mesh.services.gateway.downstream import Downstream, GrpcStages
from asr_mesh.services.gateway.pipeline import Diarization, Transcript
from asr_mesh.services.gateway.server import GatewaySettings
from asr_mesh.services.gateway.server import create_server as create_gateway
from asr_mesh.services.http.server import create_server as create_http
from asr_mesh.services.http.settings import HttpSettings
from asr_mesh.services.merge.server import MergeSettings
from asr_mesh.services.merge.server import create_server as create_merge
from asr_mesh.services.preprocess.server import PreprocessSettings
from asr_mesh.services.preprocess.server import create_server as create_preprocess

WORDS = ("Olá,", "tudo", "bem?", "Vamos", "começar", "a", "reunião.")


def wav_bytes(seconds: float = 2.0, rate: int = 16000) -> bytes:
    """A real WAV file: a quiet 440 Hz tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.1 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


@dataclass
class Behaviour:
    """What the model-free transcription stage does (tests change it)."""

    fail: Exception | None = None
    calls: list = field(default_factory=list)
    block: threading.Event | None = None


class ModelFreeStages:
    """Real preprocess and merge (gRPC), a fixed transcript instead of the model."""

    def __init__(self, real: GrpcStages, behaviour: Behaviour):
        self._real = real
        self._behaviour = behaviour
        self._cancelled = threading.Event()

    def preprocess(self, upload, options, progress):
        return self._real.preprocess(upload, options, progress)

    def transcribe(self, pcm, options, progress):
        self._behaviour.calls.append(options)
        if self._behaviour.block is not None:  # until released or cancelled (like a real stage)
            deadline = time.monotonic() + 30
            while (
                not (self._behaviour.block.is_set() or self._cancelled.is_set())
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)
        if self._behaviour.fail is not None:
            raise self._behaviour.fail
        duration = len(pcm) / 32000
        step = duration / (len(WORDS) + 1)
        words = tuple(
            Word(round(i * step, 3), round((i + 0.8) * step, 3), w, 0.9)
            for i, w in enumerate(WORDS)
        )
        return Transcript(
            [
                convert.segment_to_proto(
                    Segment(
                        0,
                        words[0].start,
                        words[2].end,
                        " ".join(WORDS[:3]),
                        words[:3],
                        avg_logprob=-0.2,
                        no_speech_prob=0.01,
                        compression_ratio=1.1,
                    )
                ),
                convert.segment_to_proto(
                    Segment(
                        1,
                        words[3].start,
                        words[-1].end,
                        " ".join(WORDS[3:]),
                        words[3:],
                        avg_logprob=-0.3,
                        no_speech_prob=0.02,
                        compression_ratio=1.2,
                    )
                ),
            ],
            options.recognition.transcription.language_code,
            "fake-model",
        )

    def diarize(self, pcm, options, progress):
        duration = len(pcm) / 32000
        return Diarization(
            [SpeakerTurn("A", 0.0, duration / 2), SpeakerTurn("B", duration / 2, duration)],
            2,
            "fixed",
        )

    def merge(self, transcript, diarization, options, duration, trace_id):
        return self._real.merge(transcript, diarization, options, duration, trace_id)

    def cancel(self) -> None:
        self._cancelled.set()
        self._real.cancel()


@pytest.fixture(scope="module")
def backends():
    pre = create_preprocess(PreprocessSettings(port=0))
    merge = create_merge(MergeSettings(port=0))
    yield pre, merge
    pre.stop(0)
    merge.stop(0)


@pytest.fixture()
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture()
def gateway(backends, behaviour, tmp_path):
    pre, merge = backends
    downstream = Downstream(pre.address, "127.0.0.1:1", "127.0.0.1:1", merge.address)
    deadlines = GatewaySettings().deadlines()
    settings = GatewaySettings(
        port=0,
        state_dir=tmp_path / "gw-state",
        spool_dir=None,
        cache_enabled=False,
        job_poll_s=0.1,
        transcription_address="127.0.0.1:1",
        diarization_address="127.0.0.1:1",
    )
    handle = create_gateway(
        settings,
        stages_factory=lambda: ModelFreeStages(GrpcStages(downstream, deadlines), behaviour),
    )
    yield handle
    handle.stop(0)


def start_http(gateway_address: str, **overrides) -> object:
    settings = HttpSettings(
        **{
            "port": 0,
            "gateway_address": gateway_address,
            "gateway_connect_timeout_s": 3,
            **overrides,
        }
    )
    return create_http(settings)


@pytest.fixture()
def http(gateway):
    handle = start_http(gateway.address)
    yield handle
    handle.stop(1)


REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningMesh:
    """`asr serve --http-port 0` running as a user would start it."""

    process: object
    state_dir: Path
    gateway: str
    http: str

    @property
    def url(self) -> str:
        return f"http://{self.http}"


@pytest.fixture(scope="session")
def http_mesh(tmp_path_factory):
    """The whole mesh as processes (no diarization) with the HTTP front door, via `asr serve`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    state = tmp_path_factory.mktemp("http-mesh") / "state"
    env = {
        **os.environ,
        "ASR_STATE_DIR": str(state),
        "PYANNOTE_METRICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asr_mesh.client.cli",
            "serve",
            "--no-diarization",
            "--http-port",
            "0",
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: dict[str, str] = {}
    deadline = time.monotonic() + 300
    try:
        for line in process.stdout:
            name, _, rest = line.partition(" listening on ")
            if rest:
                found[name.strip()] = rest.strip()
            if {"gateway", "http"} <= set(found) or time.monotonic() > deadline:
                break
        if {"gateway", "http"} - set(found):
            process.kill()
            pytest.fail(f"asr serve --http-port 0 did not start: {process.stderr.read()[-2000:]}")
        yield RunningMesh(process, state, found["gateway"], found["http"])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
