"""Metrics over HTTP, logs with trace ids, and the trace tool (waterfall, critical path, PNG)."""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.request

import grpc
import pytest
from conftest import channel_to
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from asr.common.v1 import document_pb2
from asr.merge.v1 import merge_service_pb2 as merge_pb
from asr.merge.v1 import merge_service_pb2_grpc as merge_grpc
from asr_mesh.client import traces
from asr_mesh.services.common.server import TraceContextFilter
from asr_mesh.services.merge.server import MergeSettings, create_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.grpc
def test_metrics_endpoint_reflects_requests_by_method_and_status():
    handle = create_server(MergeSettings(port=0, metrics_port=free_port()))
    channel = channel_to(handle.port)
    stub = merge_grpc.MergeServiceStub(channel)
    ok = frozenset({"service": "merge", "method": "Merge", "code": "OK"}.items())
    bad = frozenset({"service": "merge", "method": "Merge", "code": "INVALID_ARGUMENT"}.items())
    try:
        before = scrape(handle.metrics_port)
        stub.Merge(merge_pb.MergeRequest(formats=[document_pb2.OUTPUT_FORMAT_JSON]), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.Merge(
                merge_pb.MergeRequest(formats=[document_pb2.OUTPUT_FORMAT_UNSPECIFIED]), timeout=10
            )
        after = scrape(handle.metrics_port)
    finally:
        channel.close()
        handle.stop(0)

    def delta(name, labels):
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert delta("asr_grpc_server_requests_total", ok) == 1
    assert delta("asr_grpc_server_requests_total", bad) == 1
    assert delta("asr_grpc_server_request_duration_seconds_count", ok) == 1
    in_flight = frozenset({"service": "merge", "method": "Merge"}.items())
    assert after[("asr_grpc_server_in_flight_requests", in_flight)] == 0


class AbandonedContext:
    """What a servicer context reports once gRPC has dropped a response stream."""

    def __init__(self, active: bool, remaining: float | None):
        self.active, self.remaining = active, remaining

    def code(self):
        return None  # nobody set a status: the stream was closed from outside

    def is_active(self):
        return self.active

    def time_remaining(self):
        return self.remaining


@pytest.mark.parametrize(
    ("active", "remaining", "failed", "code"),
    [
        (False, 5.0, True, "CANCELLED"),  # the caller went away mid-stream
        (False, None, True, "CANCELLED"),
        (False, 0.0, True, "DEADLINE_EXCEEDED"),  # the deadline ended it
        (True, 5.0, True, "UNKNOWN"),  # a real failure with no status of its own
        (True, 5.0, False, "OK"),
    ],
)
def test_streams_closed_from_outside_are_counted_by_why_they_ended(active, remaining, failed, code):
    from asr_mesh.services.common.metrics import _code_name

    assert _code_name(AbandonedContext(active, remaining), failed) == code


def test_logs_are_json_with_the_active_trace_and_span_ids():
    from pythonjsonlogger.json import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceContextFilter("merge"))
    handler.setFormatter(
        JsonFormatter("%(levelname)s %(service)s %(message)s %(trace_id)s %(span_id)s")
    )
    logger = logging.getLogger("test.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    tracer = TracerProvider().get_tracer("test")
    try:
        with tracer.start_as_current_span("work") as span:
            logger.info("inside a span")
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert inside["service"] == "merge" and inside["message"] == "inside a span"
    assert outside["trace_id"] == ""


def _span(service, name, span_id, parent, start_ms, end_ms, status="UNSET"):
    return {
        "service": service,
        "name": name,
        "kind": "INTERNAL",
        "trace_id": "ab" * 16,
        "span_id": span_id,
        "parent_span_id": parent,
        "start_ns": start_ms * 1_000_000,
        "end_ns": end_ms * 1_000_000,
        "status": status,
        "attributes": {},
        "events": [],
    }


@pytest.fixture()
def trace_dir(tmp_path):
    spans = [
        _span("gateway", "/asr.gateway.v1.GatewayService/Transcribe", "r", "", 0, 1000),
        _span("gateway", "chain.preprocess", "p", "r", 10, 100),
        _span("gateway", "chain.transcription", "t", "r", 100, 900),
        _span(
            "transcription",
            "/asr.transcription.v1.TranscriptionService/Transcribe",
            "ts",
            "t",
            105,
            895,
        ),
        _span("gateway", "chain.diarization", "d", "r", 100, 400),
        _span("gateway", "chain.merge", "m", "r", 900, 990, status="ERROR"),
    ]
    (tmp_path / "traces").mkdir()
    lines = [json.dumps(s) for s in spans] + ['{"cut short by a crash']
    (tmp_path / "traces" / "gateway-1.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_critical_path_skips_the_shorter_parallel_branch(trace_dir):
    trace = traces.find_trace(trace_dir, "abab")  # prefix lookup
    assert len(trace.spans) == 6 and [r.span_id for r in trace.roots] == ["r"]
    assert trace.critical_path() == {"r", "p", "t", "ts", "m"}
    assert [s.span_id for s in trace.ordered()] == ["r", "p", "t", "ts", "d", "m"]
    assert trace.failed


def test_waterfall_json_and_png_render(trace_dir, tmp_path):
    trace = traces.find_trace(trace_dir, "ab" * 16)
    console = Console(record=True, width=160)
    traces.print_waterfall(trace, console)
    text = console.export_text()
    assert "★" in text and "chain.transcription" in text and "Transcribe" in text
    rows = json.loads(traces.trace_json(trace))
    assert {
        "service",
        "name",
        "trace_id",
        "span_id",
        "parent_span_id",
        "start",
        "end",
        "attributes",
    } <= set(rows[0])
    png = tmp_path / "w.png"
    traces.save_png(trace, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recent_traces_are_newest_first(trace_dir):
    other = _span("gateway", "x", "z", "", 5000, 5100) | {"trace_id": "cd" * 16}
    with open(trace_dir / "traces" / "gateway-2.jsonl", "w") as out:
        out.write(json.dumps(other) + "\n")
    assert [t.trace_id for t in traces.recent_traces(trace_dir)] == ["cd" * 16, "ab" * 16]
