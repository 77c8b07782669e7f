"""One disk quota for all the gateway's spools: uploads in flight and the job spool together."""

from __future__ import annotations

import threading

import grpc
import pytest
from conftest import channel_to
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from security_helpers import FakeStages

from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from asr_mesh.services.common.errors import LimitExceeded, Overloaded
from asr_mesh.services.gateway.quota import SpoolQuota
from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc

QUOTA = 10_000


def retry_delay_s(err: grpc.RpcError) -> float | None:
    for detail in rpc_status.from_call(err).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToMilliseconds() / 1000
    return None


@pytest.fixture()
def gateway(tmp_path, state_dir):
    spool, jobs_spool = tmp_path / "spool", tmp_path / "jobs"
    spool.mkdir()
    settings = GatewaySettings(
        port=0, spool_dir=spool, job_spool_dir=jobs_spool, job_workers=0, spool_quota_bytes=QUOTA
    )
    handle = create_server(settings, stages_factory=FakeStages)
    channel = channel_to(handle.port)
    yield (
        pb_grpc.GatewayServiceStub(channel),
        jobs_pb2_grpc.JobServiceStub(channel),
        spool,
        jobs_spool,
    )
    channel.close()
    handle.stop(0)


def requests(
    size: int,
    declared: bool,
    request_type=pb.TranscribeRequest,
    hold: threading.Event | None = None,
):
    yield request_type(
        config=pb.TranscribeConfig(filename="x.wav", upload_size_bytes=size if declared else 0)
    )
    if hold is not None:
        hold.wait(10)
    for start in range(0, size, 1000):
        yield request_type(content=b"R" * min(1000, size - start))


def test_an_upload_that_does_not_fit_beside_the_job_spool_is_resource_exhausted(gateway):
    stub, jobs, spool, jobs_spool = gateway
    job = jobs.SubmitJob(
        requests(7000, True, jobs_pb2.SubmitJobRequest), timeout=10
    ).job  # stays queued
    assert job.state == jobs_pb2.JOB_STATE_QUEUED
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Transcribe(requests(4000, True), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no room for this upload's 4000 bytes" in err.value.details()
    assert "ASR_GATEWAY_SPOOL_QUOTA_BYTES" in err.value.details()
    assert retry_delay_s(err.value) == 10.0
    assert list(spool.iterdir()) == []  # the refused request left nothing behind
    responses = list(stub.Transcribe(requests(2000, True), timeout=10))  # what fits still runs
    assert responses[-1].WhichOneof("payload") == "result"
    jobs.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.job_id), timeout=10)
    responses = list(stub.Transcribe(requests(4000, True), timeout=10))  # room again
    assert responses[-1].WhichOneof("payload") == "result"


def test_an_upload_of_no_declared_size_is_cut_when_it_passes_what_is_left(gateway):
    stub, jobs, spool, _ = gateway
    jobs.SubmitJob(requests(6000, True, jobs_pb2.SubmitJobRequest), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Transcribe(requests(50_000, False), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "of undeclared size) was cut after 5000 bytes" in err.value.details()
    assert retry_delay_s(err.value) == 10.0
    assert list(spool.iterdir()) == []


def test_declared_uploads_in_flight_hold_their_share(gateway):
    stub, _, spool, _ = gateway
    hold, outcome = threading.Event(), {}

    def first() -> None:
        try:
            outcome["first"] = list(stub.Transcribe(requests(6000, True, hold=hold), timeout=20))[
                -1
            ]
        except grpc.RpcError as err:
            outcome["first"] = err

    thread = threading.Thread(target=first)
    thread.start()
    try:
        for _ in range(200):  # the first upload is admitted once its file exists
            if list(spool.glob("asr-gateway-*/upload")):
                break
            threading.Event().wait(0.05)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Transcribe(requests(6000, True), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        hold.set()
        thread.join(20)
    assert outcome["first"].WhichOneof("payload") == "result"


def test_a_declared_size_above_the_whole_quota_can_never_fit(gateway):
    stub, _, _, _ = gateway
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Transcribe(requests(QUOTA + 1, True), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"larger than the gateway's whole spool quota of {QUOTA} bytes" in err.value.details()


def test_quota_counts_files_on_disk_and_claims(tmp_path):
    spool = tmp_path / "asr-gateway-1"
    spool.mkdir()
    (spool / "upload").write_bytes(b"x" * 300)
    (tmp_path / "other").write_bytes(b"x" * 5000)  # not a spool: not counted
    quota = SpoolQuota(1000, [(tmp_path, "asr-gateway-*")], rescan_s=0)
    assert quota.measure() == 300
    with quota.upload(500, spool / "second") as claim, open(spool / "second", "wb") as out:
        assert quota.usage() == 800
        with pytest.raises(Overloaded):
            with quota.upload(300):
                pass
        claim.add(200)
        out.write(b"x" * 200)
        assert quota.usage() == 800  # written bytes replace promised ones
    with pytest.raises(LimitExceeded):
        with quota.upload(1001):
            pass
    (spool / "second").unlink()  # the request finished: its room is free again
    with pytest.raises(Overloaded, match="cut after 800 bytes"):
        with quota.upload(0, spool / "third") as claim, open(spool / "third", "wb") as out:
            for _ in range(4):
                claim.add(200)
                out.write(b"x" * 200)
