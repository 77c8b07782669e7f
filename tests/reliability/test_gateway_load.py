"""The event-loop gateway under load: queue, don't refuse; slow and idle callers cost nothing."""
# The fixture is imported from reliability_helpers, so test parameters "redefine" it.
# ruff: noqa: F811

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from reliability_helpers import GatedStages, channel, requests, start_gateway, transcribe  # noqa: F401

from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.errors import Overloaded, from_rpc_error

pytestmark = [pytest.mark.reliability, pytest.mark.grpc]


def test_fifty_concurrent_requests_are_queued_and_all_succeed(start_gateway):
    stages = GatedStages(work_s=0.05)
    gateway = start_gateway(stages, max_chains=4, max_queued=100)
    ch = channel(gateway.port)
    stub = pb_grpc.GatewayServiceStub(ch)
    try:
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda i: transcribe(stub, f"r{i}.wav"), range(50)))
        assert len(results) == 50
        texts = sorted(r[-3].segment.text for r in results)  # each got its own transcript back
        assert texts == sorted(f"olá r{i}.wav" for i in range(50))
        assert stages.peak <= 4  # the queue held the rest: never more chains than max_chains
        assert len(stages.started) == 50
    finally:
        ch.close()


def test_a_full_queue_is_resource_exhausted_with_retry_info(start_gateway):
    gate = threading.Event()
    stages = GatedStages(gate)
    gateway = start_gateway(stages, max_chains=1, max_queued=1)
    ch = channel(gateway.port)
    stub = pb_grpc.GatewayServiceStub(ch)
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(transcribe, stub, "running.wav")
            assert _wait(lambda: stages.started == ["running.wav"])
            queued = pool.submit(transcribe, stub, "queued.wav")
            assert _wait(lambda: _queue_of(gateway).waiting == 1)
            with pytest.raises(grpc.RpcError) as refused:
                transcribe(stub, "refused.wav")
            gate.set()
            assert running.result(30) and queued.result(30)
        err = refused.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in err.details()
        status = rpc_status.from_call(err)
        hints = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(hints) == 1
        info = error_details_pb2.RetryInfo()
        hints[0].Unpack(info)
        assert info.retry_delay.ToMilliseconds() >= 1000
        assert isinstance(from_rpc_error(err), Overloaded)
        from asr_mesh.services.common.metrics import QUEUE_REJECTED

        assert QUEUE_REJECTED.labels("gateway", "full")._value.get() >= 1
        assert stages.started == ["running.wav", "queued.wav"]  # the refused one never ran
    finally:
        gate.set()
        ch.close()


def test_the_queue_is_fair_between_callers(start_gateway):
    gate = threading.Event()
    stages = GatedStages(gate)
    gateway = start_gateway(stages, max_chains=1, max_queued=20)
    # Without tokens a caller is its host and user agent: two programs on one machine.
    ch_a = channel(gateway.port, user_agent="alice/1.0")
    ch_b = channel(gateway.port, user_agent="bob/1.0")
    stub_a, stub_b = pb_grpc.GatewayServiceStub(ch_a), pb_grpc.GatewayServiceStub(ch_b)
    try:
        with ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(transcribe, stub_a, "a0.wav")]
            assert _wait(lambda: stages.started == ["a0.wav"])
            for i in range(1, 6):
                calls.append(pool.submit(transcribe, stub_a, f"a{i}.wav"))
                assert _wait(lambda i=i: _queue_of(gateway).waiting == i)
            calls.append(pool.submit(transcribe, stub_b, "b0.wav"))
            assert _wait(lambda: _queue_of(gateway).waiting == 6)
            gate.set()
            for call in calls:
                call.result(30)
        # alice's five queued requests do not all go before bob's one: the turns alternate.
        assert stages.started[:3] == ["a0.wav", "a1.wav", "b0.wav"], stages.started
    finally:
        gate.set()
        ch_a.close()
        ch_b.close()


def test_a_queued_request_leaves_the_queue_at_its_deadline_or_when_cancelled(start_gateway):
    gate = threading.Event()
    stages = GatedStages(gate)
    gateway = start_gateway(stages, max_chains=1, max_queued=5)
    ch = channel(gateway.port)
    stub = pb_grpc.GatewayServiceStub(ch)
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(transcribe, stub, "running.wav")
            assert _wait(lambda: stages.started == ["running.wav"])
            with pytest.raises(grpc.RpcError) as late:
                transcribe(stub, "late.wav", timeout=1.0)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert _wait(lambda: _queue_of(gateway).waiting == 0)
            call = stub.Transcribe(requests("cancelled.wav"), timeout=60)
            assert _wait(lambda: _queue_of(gateway).waiting == 1)
            call.cancel()
            assert _wait(lambda: _queue_of(gateway).waiting == 0)
            gate.set()
            running.result(30)
        assert stages.started == ["running.wav"]  # neither the late nor the cancelled one ran
    finally:
        gate.set()
        ch.close()


def test_fifty_reflection_clients_plus_a_normal_call(start_gateway):
    """50 reflection streams (what `buf curl`/grpcurl open) that stay open after their answers:
    health, reflection and a normal transcription all still answer at once. (Reflection is
    off by default; this gateway turns it on.)"""
    gateway = start_gateway(GatedStages(), max_chains=2, reflection_enabled=True)
    channels = [channel(gateway.port, own_connection=True) for _ in range(5)]
    hold = threading.Event()
    answered = []
    lock = threading.Lock()

    def questions():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="asr.gateway.v1.GatewayService"
        )
        hold.wait(60)  # and then the client just sits there, its stream open

    calls = []
    try:
        for i in range(50):
            stub = reflection_pb2_grpc.ServerReflectionStub(channels[i % 5])
            call = stub.ServerReflectionInfo(questions(), timeout=60)
            calls.append(call)

            def drain(call=call):
                try:
                    for response in call:
                        with lock:
                            answered.append(response.WhichOneof("message_response"))
                except grpc.RpcError:
                    pass

            threading.Thread(target=drain, daemon=True).start()
        assert _wait(lambda: len(answered) == 100, 30), len(answered)
        assert answered.count("list_services_response") == 50
        assert answered.count("file_descriptor_response") == 50
        ch = channel(gateway.port)
        try:
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            transcribe(pb_grpc.GatewayServiceStub(ch), "normal.wav", timeout=20)
        finally:
            ch.close()
    finally:
        hold.set()
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()


@pytest.mark.parametrize("idle_streams", [8, 200])
def test_idle_streams_leave_a_normal_call_unaffected(start_gateway, idle_streams):
    """Streams that send their config and then nothing wait as coroutines: no thread, no queue
    place. A normal call and a health check still answer at once."""
    gateway = start_gateway(
        GatedStages(), max_chains=2, upload_idle_timeout_s=120, upload_min_bytes_per_s=0
    )
    channels = [channel(gateway.port, own_connection=True) for _ in range(idle_streams // 50 + 1)]
    hold = threading.Event()

    def idle():
        yield pb.TranscribeRequest(config=pb.TranscribeConfig(filename="idle.wav"))
        hold.wait(120)

    calls = []
    try:
        for i in range(idle_streams):
            stub = pb_grpc.GatewayServiceStub(channels[i % len(channels)])
            calls.append(stub.Transcribe(idle(), timeout=120))
        from asr_mesh.services.common.metrics import IN_FLIGHT

        in_flight = IN_FLIGHT.labels("gateway", "Transcribe")
        assert _wait(lambda: in_flight._value.get() >= idle_streams, 30), in_flight._value.get()
        ch = channel(gateway.port)
        try:
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            transcribe(pb_grpc.GatewayServiceStub(ch), "normal.wav", timeout=20)
        finally:
            ch.close()
        assert all(not call.done() for call in calls)  # the idle ones are still waiting, unharmed
    finally:
        hold.set()
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()


def test_a_trickle_under_the_bytes_per_second_floor_is_cut_with_a_clear_status(start_gateway):
    """1 KiB every 0.2 s never leaves a gap near the idle limit, but stays under the floor."""
    stages = GatedStages()
    gateway = start_gateway(
        stages, upload_idle_timeout_s=30, upload_min_bytes_per_s=20000, upload_rate_window_s=1.0
    )
    ch = channel(gateway.port)
    stop = threading.Event()

    def trickle():
        yield pb.TranscribeRequest(config=pb.TranscribeConfig(filename="slow.wav"))
        while not stop.is_set():
            yield pb.TranscribeRequest(content=b"\0" * 1024)
            time.sleep(0.2)

    try:
        with pytest.raises(grpc.RpcError) as cut:
            list(pb_grpc.GatewayServiceStub(ch).Transcribe(trickle(), timeout=30))
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "under the floor of 20000 bytes/s" in cut.value.details()
        assert "ASR_GATEWAY_UPLOAD_MIN_BYTES_PER_S" in cut.value.details()
        assert stages.started == []
    finally:
        stop.set()
        ch.close()


def test_an_upload_open_longer_than_the_total_limit_is_cut(start_gateway):
    gateway = start_gateway(
        GatedStages(), upload_idle_timeout_s=30, upload_min_bytes_per_s=0, upload_max_duration_s=1.0
    )
    ch = channel(gateway.port)
    stop = threading.Event()

    def steady():
        yield pb.TranscribeRequest(config=pb.TranscribeConfig(filename="long.wav"))
        while not stop.is_set():
            yield pb.TranscribeRequest(content=b"\0" * 65536)
            time.sleep(0.05)

    try:
        with pytest.raises(grpc.RpcError) as cut:
            list(pb_grpc.GatewayServiceStub(ch).Transcribe(steady(), timeout=30))
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "ASR_GATEWAY_UPLOAD_MAX_DURATION_S" in cut.value.details()
    finally:
        stop.set()
        ch.close()


def test_the_sdk_retries_through_a_transient_resource_exhausted(start_gateway, tmp_path, caplog):
    from asr_mesh.client.sdk import GatewayClient, TranscribeOptions

    gate = threading.Event()
    stages = GatedStages(gate)
    gateway = start_gateway(stages, max_chains=1, max_queued=0)
    audio = tmp_path / "retry.wav"
    audio.write_bytes(b"RIFFdata")
    ch = channel(gateway.port)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(transcribe, pb_grpc.GatewayServiceStub(ch), "first.wav")
            assert _wait(lambda: stages.started == ["first.wav"])
            threading.Timer(0.5, gate.set).start()  # capacity frees before the retry hint runs out
            caplog.set_level("INFO", logger="asr_mesh.client.sdk")
            with GatewayClient(gateway.address) as client:
                result = client.transcribe(audio, TranscribeOptions(), timeout_s=30)
            first.result(30)
        assert result.segments[0].text == "olá retry.wav"
        retries = [r for r in caplog.records if "retrying" in r.getMessage()]
        assert retries and "Overloaded" in retries[0].getMessage()
        assert stages.started == ["first.wav", "retry.wav"]
    finally:
        gate.set()
        ch.close()


def test_the_sdk_gives_up_at_its_deadline(start_gateway, tmp_path):
    from asr_mesh.client.sdk import GatewayClient, TranscribeOptions

    gate = threading.Event()
    gateway = start_gateway(GatedStages(gate), max_chains=1, max_queued=0)
    audio = tmp_path / "never.wav"
    audio.write_bytes(b"RIFFdata")
    ch = channel(gateway.port)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(transcribe, pb_grpc.GatewayServiceStub(ch), "first.wav")
            with GatewayClient(gateway.address) as client, pytest.raises(Overloaded):
                client.transcribe(audio, TranscribeOptions(), timeout_s=2.5)
            gate.set()
            first.result(30)
    finally:
        gate.set()
        ch.close()


def _queue_of(gateway):
    return gateway.admission


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_the_caller_key_prefers_an_authenticated_identity_then_the_token_then_the_peer():
    from asr_mesh.services.common.scheduler import caller_identity, caller_override

    peer_a = caller_identity((("user-agent", "sdk/1"),), "ipv4:10.0.0.1:5555")
    assert peer_a == caller_identity((("user-agent", "sdk/1"),), "ipv4:10.0.0.1:6666")  # any port
    assert peer_a != caller_identity((("user-agent", "sdk/1"),), "ipv4:10.0.0.2:5555")
    token = caller_identity((("authorization", "Bearer s3cret"),), "ipv4:10.0.0.1:1")
    assert token == caller_identity((("authorization", "Bearer s3cret"),), "ipv4:10.0.0.9:1")
    assert token.startswith("token:") and "s3cret" not in token
    reset = caller_override.set("team-a")
    try:
        assert (
            caller_identity((("authorization", "Bearer s3cret"),), "ipv4:10.0.0.1:1") == "id:team-a"
        )
    finally:
        caller_override.reset(reset)
