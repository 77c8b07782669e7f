"""One way to rebuild a method handler: every interceptor keeps the kind and the serializers."""

from __future__ import annotations

import grpc
import pytest

from asr_mesh.services.common.handlers import handler_kind, rewrapped

FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


@pytest.mark.parametrize("kind", FACTORIES)
def test_rewrapped_keeps_kind_and_serializers_and_wraps_the_behaviour(kind):
    def behaviour(request, context):
        return f"{kind}:{request}"

    original = FACTORIES[kind](
        behaviour, request_deserializer=bytes.decode, response_serializer=str.encode
    )
    seen = []

    def wrap(inner, wrapped_kind):
        seen.append(wrapped_kind)
        return lambda request, context: inner(request.upper(), context)

    rebuilt = rewrapped(original, wrap)
    assert handler_kind(rebuilt) == kind and seen == [kind]
    assert (rebuilt.request_streaming, rebuilt.response_streaming) == (
        original.request_streaming,
        original.response_streaming,
    )
    assert (
        rebuilt.request_deserializer is bytes.decode and rebuilt.response_serializer is str.encode
    )
    assert getattr(rebuilt, kind)("x", None) == f"{kind}:X"
    others = [k for k in FACTORIES if k != kind]
    assert all(getattr(rebuilt, k) is None for k in others)
