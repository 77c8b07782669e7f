"""Retries (tenacity, UNAVAILABLE only, 3 attempts) and graceful drain, on real gRPC servers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import channel_to

from asr.merge.v1 import merge_service_pb2 as merge_pb
from asr.merge.v1 import merge_service_pb2_grpc as merge_grpc
from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import Segment
from asr_mesh.services.common.errors import DependencyUnavailable, InvalidInput
from asr_mesh.services.common.server import build_server
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.gateway.downstream import Deadlines, Downstream, GrpcStages
from asr_mesh.services.gateway.pipeline import ChainOptions, Transcript

pytestmark = pytest.mark.grpc


class FlakyMerge(merge_grpc.MergeServiceServicer):
    """Fails the first `failures` calls with `code`, then answers (slowly if asked)."""

    def __init__(self, failures: int, code=grpc.StatusCode.UNAVAILABLE, delay_s: float = 0.0):
        self.failures, self.code, self.delay_s = failures, code, delay_s
        self.calls = 0
        self.entered = threading.Event()

    def Merge(self, request, context):
        self.calls += 1
        self.entered.set()
        if self.calls <= self.failures:
            context.abort(self.code, f"attempt {self.calls} refused")
        time.sleep(self.delay_s)
        return merge_pb.MergeResponse(speakers=["SPEAKER_00"])


def start(servicer):
    return build_server(
        ServerSettings(port=0, grace_period_s=5),
        register=lambda server: merge_grpc.add_MergeServiceServicer_to_server(servicer, server),
        service_names=["asr.merge.v1.MergeService"],
    )


def merge_through_gateway_adapter(port: int):
    address = f"127.0.0.1:{port}"
    stages = GrpcStages(Downstream(address, address, address, address), Deadlines(merge_s=10))
    transcript = Transcript(
        [convert.segment_to_proto(Segment(0, 0.0, 1.0, "olá"))], "pt-BR", "base"
    )
    return stages.merge(transcript, None, ChainOptions(), 1.0, "")


@pytest.mark.parametrize(("failures", "ok"), [(0, True), (2, True), (3, False)])
def test_unavailable_is_retried_up_to_three_attempts(failures, ok):
    servicer = FlakyMerge(failures)
    handle = start(servicer)
    try:
        if ok:
            assert merge_through_gateway_adapter(handle.port).speakers == ["SPEAKER_00"]
        else:
            with pytest.raises(DependencyUnavailable, match="merge service is unavailable"):
                merge_through_gateway_adapter(handle.port)
        assert servicer.calls == min(failures + 1, 3)
    finally:
        handle.stop(0)


def test_other_errors_are_not_retried():
    servicer = FlakyMerge(5, code=grpc.StatusCode.INVALID_ARGUMENT)
    handle = start(servicer)
    try:
        with pytest.raises(InvalidInput, match="attempt 1 refused"):
            merge_through_gateway_adapter(handle.port)
        assert servicer.calls == 1
    finally:
        handle.stop(0)


def test_stop_reports_not_serving_and_drains_in_flight_calls():
    from grpc_health.v1 import health_pb2

    servicer = FlakyMerge(0, delay_s=1.0)
    handle = start(servicer)
    channel = channel_to(handle.port)
    stub = merge_grpc.MergeServiceStub(channel)
    future = stub.Merge.future(merge_pb.MergeRequest(), timeout=10)
    assert servicer.entered.wait(10)  # the call is inside the handler now
    stopper = threading.Thread(target=handle.stop, args=(5,))
    stopper.start()
    assert future.result().speakers == ["SPEAKER_00"]  # in-flight call finished during the drain
    stopper.join(10)
    assert handle.health.Check(health_pb2.HealthCheckRequest(service=""), None).status == (
        health_pb2.HealthCheckResponse.NOT_SERVING
    )
    with pytest.raises(grpc.RpcError):  # new calls are refused once stopped
        stub.Merge(merge_pb.MergeRequest(), timeout=2)
    channel.close()


SIGTERM_ON_A_WORKER_THREAD = """
import signal, threading, time
from asr_mesh.services.merge.server import main

def send_to_this_thread():
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # until run_service listens
        time.sleep(0.01)
    time.sleep(0.2)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # not the main thread

threading.Thread(target=send_to_this_thread, daemon=True).start()
main()
"""


def test_sigterm_taken_by_another_thread_still_stops_the_service(tmp_path):
    """The kernel may hand a process's SIGTERM to any thread; Python runs the handler on the
    main thread only, which must therefore never sleep in an untimed wait."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "ASR_MERGE_PORT": "0",
        "ASR_STATE_DIR": str(tmp_path),
        "ASR_MERGE_GRACE_PERIOD_S": "0",
        "OTEL_TRACES_EXPORTER": "none",
    }
    # Before the fix the service never woke up to run its handler: this call timed out.
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_ON_A_WORKER_THREAD],
        env=env,
        timeout=30,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "received SIGTERM" in proc.stderr + proc.stdout
