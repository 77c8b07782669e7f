"""The one category ↔ gRPC status table of the mesh, and a failed call back to a typed exception.

`STATUS_OF` is the only place a domain `Category` becomes a gRPC status code. The server's
interceptors (`asr_mesh.services.common.errors`) apply it to every exception a servicer raises, with
a human sentence and google.rpc details (ErrorInfo with the reason, BadRequest naming the field,
RetryInfo); `from_rpc_error` reads those back here, on the client side, into the classes of
`asr_mesh.client.errors`. Both directions use this table, and the client needs no server code.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from asr_mesh.client.errors import Category, DependencyUnavailable, MeshError, rebuild

__all__ = ["ERROR_DOMAIN", "STATUS_OF", "category_of", "from_rpc_error", "status_code"]

ERROR_DOMAIN = "asr-mesh"
"""google.rpc ErrorInfo.domain of every error the mesh reports."""

STATUS_OF: Mapping[Category, grpc.StatusCode] = MappingProxyType(
    {
        Category.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
        Category.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        Category.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
        Category.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
        Category.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
        Category.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
        Category.CANCELLED: grpc.StatusCode.CANCELLED,
        Category.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
        Category.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
        Category.INTERNAL: grpc.StatusCode.INTERNAL,
    }
)
"""The one category → gRPC status table of the mesh (one code per category, so it inverts)."""

_CATEGORY_OF: dict[grpc.StatusCode, Category] = {code: cat for cat, code in STATUS_OF.items()}


def status_code(error: MeshError) -> grpc.StatusCode:
    """The gRPC status code `error` is reported with."""
    return STATUS_OF[error.category]


def category_of(code: grpc.StatusCode) -> Category:
    """The category a status code reports (INTERNAL for a code no category uses: UNKNOWN...)."""
    return _CATEGORY_OF.get(code, Category.INTERNAL)


def from_rpc_error(err: grpc.RpcError, *, service: str = "") -> MeshError:
    """Turn a failed call into the typed exception the remote service raised.

    The class comes from the ErrorInfo reason when the status code agrees with it, else from the
    code alone (a status a server wrote without details, or a code with no category: INTERNAL).
    The BadRequest field and the RetryInfo delay come back too. `service` names the callee in
    the sentence of an UNAVAILABLE error that does not say it already.
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else "") or str(code)
    reason, field, metadata, retry_after = "", "", {}, None
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else ""
    error = rebuild(
        category_of(code),
        reason,
        message,
        metadata=metadata,
        field=field,
        retry_after_s=retry_after,
    )
    if type(error) is DependencyUnavailable and service and "service is unavailable" not in message:
        error = DependencyUnavailable(
            f"{service} service is unavailable: {message}", metadata=metadata
        )
    return error
