"""A gRPC method handler rebuilt with its behaviour wrapped: the step every interceptor here takes.

A server interceptor that changes what a method does gets the service's `RpcMethodHandler`, one
of four kinds (unary or streaming request × unary or streaming response), and must return a new
handler of the same kind with the same (de)serializers. `rewrapped` does that once for the error
map, metrics, stall guard, caps and token interceptors, sync and aio servers alike (both take the
same handler type).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

_FACTORIES: dict[str, Callable[..., Any]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def handler_kind(handler: Any) -> str:
    """ "unary_unary", "unary_stream", "stream_unary" or "stream_stream" (request_response)."""
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    return f"{request}_{response}"


def rewrapped(handler: Any, wrap: Callable[[Callable[..., Any], str], Callable[..., Any]]) -> Any:
    """A handler of `handler`'s kind and (de)serializers whose behaviour is
    `wrap(behaviour, kind)`, `behaviour` being `handler`'s own."""
    kind = handler_kind(handler)
    return _FACTORIES[kind](
        wrap(getattr(handler, kind), kind),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
