"""The client's trace-context propagation without the OpenTelemetry gRPC instrumentation (what a
venv with only asr-mesh-client has): every kind of call carries the caller's `traceparent`."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from asr_mesh.client.tracing import _PropagatingInterceptor

pytestmark = pytest.mark.grpc


@pytest.fixture()
def recorder():
    seen: list[dict[str, str]] = []

    def record(context) -> None:
        seen.append(dict(context.invocation_metadata()))

    def unary(request, context):
        record(context)
        return b"ok"

    def streaming(request_iterator, context):
        record(context)
        for _ in request_iterator:
            pass
        yield b"ok"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Echo",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.stream_stream_rpc_method_handler(streaming),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port}"), _PropagatingInterceptor()
    )
    yield channel, seen
    channel.close()
    server.stop(0)


def test_calls_carry_the_current_trace_and_keep_their_metadata(recorder):
    channel, seen = recorder
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        assert channel.unary_unary("/test.Echo/Unary")(b"x", metadata=[("x-caller", "me")]) == b"ok"
        assert list(channel.stream_stream("/test.Echo/Stream")(iter([b"a", b"b"]))) == [b"ok"]
    assert len(seen) == 2
    for metadata in seen:
        assert metadata["traceparent"].split("-")[1] == trace_id
    assert seen[0]["x-caller"] == "me"


def test_without_a_current_span_nothing_is_added(recorder):
    channel, seen = recorder
    channel.unary_unary("/test.Echo/Unary")(b"x")
    assert "traceparent" not in seen[0]
