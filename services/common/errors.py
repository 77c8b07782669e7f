"""One map from domain exceptions to gRPC status codes, for every service.

Cores raise the exceptions below; `ErrorMappingInterceptor` turns them into a status with a
human sentence and `google.rpc` details; nothing else in a servicer handles errors. Clients use
`from_rpc_error` to get the same typed exceptions back, so the gateway can pass a downstream
INVALID_ARGUMENT on to its caller unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

ERROR_DOMAIN = "asr-mesh"


class MeshError(Exception):
    """Base of every error a core may raise on purpose. The message is shown to the caller."""

    status = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidInput(MeshError):
    """The caller sent something that can never succeed as sent."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_INPUT"

    def __init__(self, message: str, *, field: str = "", metadata: dict[str, str] | None = None):
        super().__init__(message, metadata=metadata)
        self.field = field


class InvalidAudio(InvalidInput):
    """The upload is not audio the mesh can decode (empty, corrupt, no audio stream...)."""

    reason = "INVALID_AUDIO"


class LimitExceeded(InvalidInput):
    """The input is larger or longer than a configured limit allows."""

    reason = "LIMIT_EXCEEDED"


class UnknownModel(InvalidInput):
    """The caller asked for a model the service does not have."""

    reason = "UNKNOWN_MODEL"


class Overloaded(MeshError):
    """The service is at capacity; the caller should retry after `retry_after_s`."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class DependencyUnavailable(MeshError):
    """A service this one depends on cannot be reached (transient)."""

    status = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


class Draining(DependencyUnavailable):
    """This replica is shutting down and handed the request back before starting it: safe to
    retry (here after a restart, or on another replica) after `retry_after_s`."""

    reason = "DRAINING"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class DependencyFailed(MeshError):
    """A service failed while it was already working on this request.

    Reported as INTERNAL rather than UNAVAILABLE on purpose: UNAVAILABLE tells callers and load
    balancers "safe to retry", and replaying a request that may have killed a replica could
    take down the next one too.
    """

    reason = "DEPENDENCY_FAILED"


class DeadlineExceeded(MeshError):
    """The work did not finish within its deadline."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class UploadStalled(DeadlineExceeded):
    """The caller opened a request stream and then stopped sending before it was complete."""

    reason = "UPLOAD_STALLED"


class Cancelled(MeshError):
    """The caller went away."""

    status = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class InternalError(MeshError):
    """Something broke that is not the caller's fault."""


class NotFound(MeshError):
    """The caller named something that does not exist (any more): a job id, expired results."""

    status = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class FailedPrecondition(MeshError):
    """The request is valid but the thing it names is not in a state that allows it yet."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unauthenticated(MeshError):
    """The caller did not say who it is (no bearer token) where the server requires it."""

    status = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(MeshError):
    """The caller's credentials are not accepted (a wrong or revoked token)."""

    status = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


_BY_STATUS: dict[grpc.StatusCode, type[MeshError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: DependencyUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}
_BY_REASON: dict[str, type[MeshError]] = {
    cls.reason: cls
    for cls in (InvalidInput, InvalidAudio, LimitExceeded, UnknownModel, Overloaded, DependencyFailed,
                UploadStalled, Draining)
}


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
    if getattr(error, "retry_after_s", None):  # Overloaded, Draining: when to try again
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(
        code=getattr(code_pb2, error.status.name), message=error.message, details=packed
    )


def from_rpc_error(err: grpc.RpcError, *, service: str = "") -> MeshError:
    """Turn a failed call into the typed exception the remote service raised."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else "") or str(code)
    reason, metadata, retry_after = "", {}, None
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_after = info.retry_delay.ToMilliseconds() / 1000
    cls = _BY_REASON.get(reason) or _BY_STATUS.get(code, InternalError)
    if cls is DependencyUnavailable and service and "service is unavailable" not in message:
        message = f"{service} service is unavailable: {message}"
    if cls in (Overloaded, Draining):
        return cls(message, retry_after_s=retry_after or 1.0, metadata=metadata)
    return cls(message, metadata=metadata)


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
        log.warning("%s failed: %s: %s", method, error.status.name, error.message)
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
