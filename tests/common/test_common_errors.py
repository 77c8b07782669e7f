"""The one error map: domain exceptions ↔ gRPC statuses with google.rpc details."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from services.common import errors


class FakeRpcError(grpc.RpcError):
    """What a client sees: code, details and the status in trailing metadata."""

    def __init__(self, error: errors.MeshError):
        self._status = rpc_status.to_status(errors.to_status(error))

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidAudio("the file is empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.LimitExceeded("too long", metadata={"limit_seconds": "60"}), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnknownModel("unknown model 'x'"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded("queue full", retry_after_s=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.DependencyUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (errors.DependencyFailed("died mid-request"), grpc.StatusCode.INTERNAL),
        (errors.DeadlineExceeded("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.InternalError("boom"), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_round_trip_through_status(error, code):
    rpc_error = FakeRpcError(error)
    assert rpc_error.code() == code
    back = errors.from_rpc_error(rpc_error)
    assert type(back) is type(error)
    assert back.message == error.message
    assert back.metadata == error.metadata
    if isinstance(error, errors.Overloaded):
        assert back.retry_after_s == pytest.approx(2.5)


def test_bad_request_details_name_the_field():
    status = errors.to_status(errors.InvalidInput("must be mono", field="config.format.channels"))
    from google.rpc import error_details_pb2

    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            violations += [(v.field, v.description) for v in request.field_violations]
    assert violations == [("config.format.channels", "must be mono")]


def test_unavailable_names_the_service():
    back = errors.from_rpc_error(FakeRpcError(errors.DependencyUnavailable("connection refused")),
                                 service="transcription")
    assert back.message == "transcription service is unavailable: connection refused"
