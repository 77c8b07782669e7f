"""The one map from domain errors to gRPC statuses, and the interceptor that applies it.

Cores raise the grpc-free exceptions of `services.common.domain_errors`, each with a domain
`Category`; `STATUS_OF` below is the only table that turns a category into a gRPC status code.
`ErrorMappingInterceptor` (and `services.common.aio`'s event-loop twin) turns a raised exception
into that status with a human sentence and `google.rpc` details (ErrorInfo with the reason,
BadRequest naming the field, RetryInfo); nothing else in a servicer handles errors. Clients use
`from_rpc_error` to get the same typed exceptions back, so the gateway can pass a downstream
INVALID_ARGUMENT on to its caller unchanged.

The exception classes are re-exported here, so `from services.common.errors import InvalidInput`
keeps working for servicers and clients; cores import `services.common.domain_errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.domain_errors import (
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
    rebuild,
)

__all__ = [
    "ERROR_DOMAIN", "STATUS_OF", "Cancelled", "Category", "DeadlineExceeded",
    "DependencyFailed", "DependencyUnavailable", "Draining", "ErrorMappingInterceptor",
    "FailedPrecondition", "InternalError", "InvalidAudio", "InvalidInput", "LimitExceeded",
    "MeshError", "NotFound", "Overloaded", "PermissionDenied", "Unauthenticated", "UnknownModel",
    "UploadStalled", "from_rpc_error", "status_code", "to_status",
]

log = logging.getLogger(__name__)

ERROR_DOMAIN = "asr-mesh"

STATUS_OF: Mapping[Category, grpc.StatusCode] = MappingProxyType({
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
})
"""The one category → gRPC status table of the mesh (one code per category, so it inverts)."""

_CATEGORY_OF: dict[grpc.StatusCode, Category] = {code: cat for cat, code in STATUS_OF.items()}


def status_code(error: MeshError) -> grpc.StatusCode:
    """The gRPC status code `error` is reported with."""
    return STATUS_OF[error.category]


def to_status(error: MeshError) -> status_pb2.Status:
    """Build the `google.rpc.Status` (with ErrorInfo and, where useful, more details)."""
    details: list[Any] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
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


def from_rpc_error(err: grpc.RpcError, *, service: str = "") -> MeshError:
    """Turn a failed call into the typed exception the remote service raised.

    The class comes from the ErrorInfo reason when the status code agrees with it, else from the
    code alone (a status a server wrote without details, or a code with no category: INTERNAL).
    The BadRequest field and the RetryInfo delay come back too.
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
    error = rebuild(_CATEGORY_OF.get(code, Category.INTERNAL), reason, message,
                    metadata=metadata, field=field, retry_after_s=retry_after)
    if type(error) is DependencyUnavailable and service and "service is unavailable" not in message:
        error = DependencyUnavailable(f"{service} service is unavailable: {message}",
                                      metadata=metadata)
    return error


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
    from services.common.telemetry import current_trace_id

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

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                wrap_stream(handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary),
            handler.request_deserializer,
            handler.response_serializer,
        )


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """True when the exception is gRPC's own signal from `context.abort` (already has a status)."""
    try:
        return bool(context.code()) and context.code() != grpc.StatusCode.OK
    except Exception:  # older grpc without ServicerContext.code()
        return False
