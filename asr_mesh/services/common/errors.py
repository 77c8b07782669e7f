"""The interceptors that turn a raised domain error into its gRPC status, and the re-exports.

Cores raise the grpc-free exceptions of `asr_mesh.services.common.domain_errors` (the client
distribution's `asr_mesh.client.errors`), each with a domain `Category`. The one table that
turns a category into a gRPC status code is `asr_mesh.client.status.STATUS_OF`: it lives in the
client because callers need the other direction (`from_rpc_error`) without the server installed.
Here, `ErrorMappingInterceptor` (and `asr_mesh.services.common.aio`'s event-loop twin) applies it: a
raised exception becomes that status with a human sentence and `google.rpc` details (ErrorInfo
with the reason, BadRequest naming the field, RetryInfo); nothing else in a servicer handles
errors. The gateway uses `from_rpc_error` to pass a downstream INVALID_ARGUMENT on to its caller
unchanged.

The exception classes, the table and `from_rpc_error` are re-exported here, so
`from asr_mesh.services.common.errors import InvalidInput` keeps working for servicers; cores import
`asr_mesh.services.common.domain_errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from asr_mesh.client.status import ERROR_DOMAIN, STATUS_OF, from_rpc_error, status_code
from asr_mesh.services.common.domain_errors import (
    Cancelled,
    Category,
    DeadlineExceeded,
    DependencyFailed,
    DependencyUnavailable,
    Draining,
    FailedPrecondition,
    InternalError,
    InvalidAudio,
    InvalidInput,
    LimitExceeded,
    MeshError,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    UnknownModel,
    UploadStalled,
)
from asr_mesh.services.common.handlers import rewrapped

__all__ = [
    "ERROR_DOMAIN",
    "STATUS_OF",
    "Cancelled",
    "Category",
    "DeadlineExceeded",
    "DependencyFailed",
    "DependencyUnavailable",
    "Draining",
    "ErrorMappingInterceptor",
    "FailedPrecondition",
    "InternalError",
    "InvalidAudio",
    "InvalidInput",
    "LimitExceeded",
    "MeshError",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Unauthenticated",
    "UnknownModel",
    "UploadStalled",
    "from_rpc_error",
    "status_code",
    "to_status",
]

log = logging.getLogger(__name__)


def to_status(error: MeshError) -> status_pb2.Status:
    """Build the `google.rpc.Status` (with ErrorInfo and, where useful, more details)."""
    details: list[Any] = [
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    ]
    if isinstance(error, InvalidInput) and error.field:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.message
                    )
                ]
            )
        )
    if isinstance(error, Overloaded | Draining) and error.retry_after_s:  # when to try again
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(
        code=getattr(code_pb2, status_code(error).name), message=error.message, details=packed
    )


def _abort(context: grpc.ServicerContext, error: MeshError) -> None:
    context.abort_with_status(rpc_status.to_status(to_status(error)))


def _fail(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    """Abort the call with the status `exc` maps to."""
    if not context.is_active():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            log.warning("%s: deadline exceeded", method)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the request ran out of time")
        if not isinstance(exc, MeshError | grpc.RpcError):  # a real bug, even if nobody waits
            log.error("%s failed after the caller left", method, exc_info=exc)
        else:
            # The caller cancelled or went away (gRPC then raises a bare RpcError from the
            # request iterator): nobody is listening, and it is not a server fault.
            log.info("%s: the caller went away", method)
        context.abort(grpc.StatusCode.CANCELLED, "the caller cancelled the request")
    _abort(context, _translate(exc, method))


def _translate(exc: BaseException, method: str) -> MeshError:
    if isinstance(exc, MeshError | grpc.RpcError):
        error = exc if isinstance(exc, MeshError) else from_rpc_error(exc)
        log.warning("%s failed: %s: %s", method, status_code(error).name, error.message)
        return error
    log.exception("unhandled error in %s", method)
    from asr_mesh.services.common.telemetry import current_trace_id

    trace = current_trace_id()
    hint = f" (trace id {trace})" if trace else ""
    return InternalError(f"internal error while handling {method}{hint}")


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by servicers (also from inside response streams) to statuses."""

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_unary(behavior: Callable) -> Callable:
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behavior(request_or_iterator, context)
                except Exception as exc:
                    if _is_abort(exc, context):
                        raise
                    _fail(context, exc, method)

            return wrapped

        def wrap_stream(behavior: Callable) -> Callable:
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from behavior(request_or_iterator, context)
                except Exception as exc:
                    if _is_abort(exc, context):
                        raise
                    _fail(context, exc, method)

            return wrapped

        return rewrapped(
            handler,
            lambda behavior, kind: (
                wrap_stream(behavior) if kind.endswith("_stream") else wrap_unary(behavior)
            ),
        )


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """True when the exception is gRPC's own signal from `context.abort` (already has a status)."""
    try:
        return bool(context.code()) and context.code() != grpc.StatusCode.OK
    except Exception:  # older grpc without ServicerContext.code()
        return False
