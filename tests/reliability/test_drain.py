"""SIGTERM drains the gateway process: in-flight requests finish, queued ones are handed back.

The gateway runs as its own process (`python -m asr_mesh.services.gateway.server`, the real `main()`
and signal handling); its downstream services are small in-process fakes, so the test controls
exactly when the in-flight request may finish.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from reliability_helpers import channel, transcribe

from asr.common.v1 import audio_pb2, document_pb2, transcript_pb2
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.merge.v1 import merge_service_pb2 as merge_pb
from asr.merge.v1 import merge_service_pb2_grpc as merge_grpc
from asr.preprocess.v1 import preprocess_service_pb2 as pre_pb
from asr.preprocess.v1 import preprocess_service_pb2_grpc as pre_grpc
from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common.server import build_server
from asr_mesh.services.common.settings import ServerSettings

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[2]


class Backends(
    pre_grpc.PreprocessServiceServicer,
    tr_grpc.TranscriptionServiceServicer,
    merge_grpc.MergeServiceServicer,
):
    """Preprocess, transcription and merge in one fake; transcription waits for `release`."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.transcriptions = 0

    def Preprocess(self, request_iterator, context):
        for _ in request_iterator:
            pass
        yield pre_pb.PreprocessResponse(media_info=audio_pb2.MediaInfo(codec="pcm_s16le"))
        yield pre_pb.PreprocessResponse(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 16000))
        yield pre_pb.PreprocessResponse(summary=pre_pb.PreprocessSummary(pcm_bytes=32000))

    def Transcribe(self, request_iterator, context):
        for _ in request_iterator:
            pass
        self.transcriptions += 1
        self.entered.set()
        assert self.release.wait(60)
        yield tr_pb.TranscribeResponse(segment=transcript_pb2.Segment(text="olá"))
        yield tr_pb.TranscribeResponse(
            result=tr_pb.TranscriptionResult(language_code="pt-BR", model="fake")
        )

    def Merge(self, request, context):
        return merge_pb.MergeResponse(
            segments=request.segments,
            documents=[
                document_pb2.Document(
                    format=document_pb2.OUTPUT_FORMAT_JSON, content="{}", file_extension="json"
                )
            ],
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queue_depth(metrics_port: int) -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    for line in text.splitlines():
        if line.startswith('asr_queue_depth{service="gateway"}'):
            return float(line.split()[-1])
    return -1.0


def test_sigterm_drains_in_flight_work_and_hands_queued_requests_back(tmp_path):
    fake = Backends()

    def register(server):
        pre_grpc.add_PreprocessServiceServicer_to_server(fake, server)
        tr_grpc.add_TranscriptionServiceServicer_to_server(fake, server)
        merge_grpc.add_MergeServiceServicer_to_server(fake, server)

    backends = build_server(
        ServerSettings(port=0),
        register=register,
        service_names=["asr.preprocess.v1.PreprocessService"],
    )
    metrics_port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}:{REPO / 'gen'}",
        "ASR_STATE_DIR": str(tmp_path / "state"),
        "OTEL_TRACES_EXPORTER": "none",
        "ASR_GATEWAY_PORT": "0",
        "ASR_GATEWAY_PREPROCESS_ADDRESS": backends.address,
        "ASR_GATEWAY_TRANSCRIPTION_ADDRESS": backends.address,
        "ASR_GATEWAY_MERGE_ADDRESS": backends.address,
        "ASR_GATEWAY_DIARIZATION_ADDRESS": "",
        "ASR_GATEWAY_MAX_CHAINS": "1",
        "ASR_GATEWAY_GRACE_PERIOD_S": "30",
        "ASR_GATEWAY_CACHE_ENABLED": "false",
        "ASR_GATEWAY_JOB_WORKERS": "0",
        "ASR_GATEWAY_METRICS_PORT": str(metrics_port),
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "asr_mesh.services.gateway.server"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = gateway.stdout.readline()
        assert line.startswith("ASR_READY"), line + gateway.stderr.read()
        port = int(line.split("port=")[1])
        ch = channel(port)
        stub = pb_grpc.GatewayServiceStub(ch)
        with ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(transcribe, stub, "in-flight.wav")
            assert fake.entered.wait(30)
            queued = pool.submit(transcribe, stub, "queued.wav")
            deadline = time.monotonic() + 30
            while _queue_depth(metrics_port) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _queue_depth(metrics_port) == 1
            gateway.send_signal(signal.SIGTERM)
            # The queued request comes back at once, while the in-flight one is still working.
            with pytest.raises(grpc.RpcError) as handed_back:
                queued.result(20)
            assert not in_flight.done()
            fake.release.set()
            responses = in_flight.result(30)
        err = handed_back.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in err.details() and "retry" in err.details()
        status = rpc_status.from_call(err)
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        assert responses[-1].result.segment_count == 1
        assert fake.transcriptions == 1  # the handed-back request was never started
        assert gateway.wait(timeout=30) == 0
        ch.close()
    finally:
        fake.release.set()
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        backends.stop(0)
