"""Trace-context propagation for the SDK's calls (OpenTelemetry API only).

Every call the SDK makes carries the caller's current trace context (W3C `traceparent`), so the
gateway continues the caller's trace instead of starting a new one. The client needs nothing
more than `opentelemetry-api`: without an OpenTelemetry SDK configured in the caller's process
there is no current span and nothing is added. Where the OpenTelemetry gRPC instrumentation is
installed (it is, with the server distribution: the HTTP front door uses the SDK), the channel
is wrapped with it instead, which also records a CLIENT span per call.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from opentelemetry import propagate, trace

__all__ = ["traced_channel"]


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """Wrap a channel so every call carries the current trace context."""
    try:
        from opentelemetry.instrumentation.grpc import client_interceptor
        from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
    except ImportError:  # the client distribution alone: propagation only
        return grpc.intercept_channel(channel, _PropagatingInterceptor())
    # The contrib interceptor speaks its own interface, so it needs its own intercept_channel.
    interceptor = client_interceptor(  # type: ignore[no-untyped-call]  # contrib is untyped
        tracer_provider=trace.get_tracer_provider()
    )
    wrapped: grpc.Channel = intercept_channel(  # type: ignore[no-untyped-call]
        channel, interceptor
    )
    return wrapped


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]  # grpc is untyped
):
    pass


def _with_context(details: Any) -> _CallDetails:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    metadata = list(details.metadata or ()) + list(carrier.items())
    return _CallDetails(
        details.method,
        details.timeout,
        metadata or None,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class _PropagatingInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the current trace context to the metadata of every call."""

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(_with_context(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(_with_context(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return continuation(_with_context(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return continuation(_with_context(details), requests)
