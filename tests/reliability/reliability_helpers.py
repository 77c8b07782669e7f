"""Helpers (and the `start_gateway` fixture) of the reliability tier: an in-process event-loop gateway with gated fake stages."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import MediaReport, Segment, Word
from asr_mesh.services.gateway.pipeline import Decoded, Merged, RenderedDocument, Transcript
from asr_mesh.services.gateway.server import GatewaySettings, create_server


class GatedStages:
    """Fast fake stages that record which request (by filename) started when, and can be held
    at preprocess until `gate` opens: the chain logic is real, the services are not."""

    def __init__(self, gate: threading.Event | None = None, work_s: float = 0.0):
        self.gate = gate
        self.work_s = work_s
        self.started: list[str] = []
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def preprocess(self, upload, options, progress):
        with self._lock:
            self.started.append(options.filename)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(60), "the test never opened the gate"
            if self.work_s:
                time.sleep(self.work_s)
        finally:
            with self._lock:
                self.running -= 1
        progress(MediaReport(container="wav", codec="pcm_s16le", size_bytes=upload.stat().st_size))
        return Decoded(media=MediaReport(container="wav"), pcm=b"\0\0" * 16000, duration=1.0)

    def transcribe(self, pcm, options, progress):
        words = (Word(0.0, 0.4, "olá", 0.9),)
        return Transcript(
            [convert.segment_to_proto(Segment(0, 0.0, 0.4, f"olá {options.filename}", words))],
            "pt-BR",
            "base",
        )

    def diarize(self, pcm, options, progress):  # pragma: no cover - these tests do not diarize
        raise AssertionError("not used")

    def merge(self, transcript, diarization, options, duration, trace_id):
        docs = [
            RenderedDocument(f, transcript.segments[0].text, f, "text/plain")
            for f in options.formats
        ]
        return Merged(transcript.segments, [], docs)

    def cancel(self) -> None:
        pass


def channel(port: int, *, own_connection: bool = False, user_agent: str = "") -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    if user_agent:
        options.append(("grpc.primary_user_agent", user_agent))
    if own_connection:  # not shared with other channels: HTTP/2 caps streams per connection at 100
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=options)


def requests(name: str, content: bytes = b"RIFFdata"):
    yield pb.TranscribeRequest(
        config=pb.TranscribeConfig(filename=name, upload_size_bytes=len(content))
    )
    yield pb.TranscribeRequest(content=content)


def transcribe(stub: pb_grpc.GatewayServiceStub, name: str, timeout: float = 60, metadata=None):
    responses = list(stub.Transcribe(requests(name), timeout=timeout, metadata=metadata))
    assert responses[-1].HasField("result"), responses[-1]
    return responses


@pytest.fixture()
def start_gateway(tmp_path):
    """`start_gateway(stages, **settings)` → a running gateway handle; all are stopped at the end."""
    handles = []

    def start(stages, **overrides):
        spool = tmp_path / f"spool{len(handles)}"
        spool.mkdir()
        settings = GatewaySettings(
            port=0,
            spool_dir=spool,
            state_dir=tmp_path / "state",
            cache_enabled=False,
            job_workers=0,
            diarization_address="",
            **overrides,
        )
        handle = create_server(settings, stages_factory=lambda: stages)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(0)
