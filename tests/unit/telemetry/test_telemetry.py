"""Where spans go, what a span and a trace id look like, and the metrics endpoint."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from cag.telemetry.metrics import REQUESTS, ROUTE_DECISIONS, TTFT, serve_metrics
from cag.telemetry.tracing import JsonLinesExporter, TelemetrySettings, current_trace_id


@pytest.mark.parametrize(
    ("fields", "destination"),
    [
        ({}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"traces_file": "/tmp/spans.jsonl"}, "file"),
        ({"traces": "off", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "off"),
    ],
)
def test_where_spans_go(fields: dict[str, str], destination: str) -> None:
    assert TelemetrySettings.model_validate(fields).destination == destination


def test_spans_written_as_json_lines_carry_their_trace(tmp_path: Path) -> None:
    provider = TracerProvider()
    path = tmp_path / "spans.jsonl"
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    tracer = provider.get_tracer("test")
    assert current_trace_id() == ""
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner"):
        trace_id = current_trace_id()
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["name"] for s in spans] == ["inner", "outer"]
    assert {s["context"]["trace_id"] for s in spans} == {f"0x{trace_id}"}
    assert spans[0]["parent_id"] == spans[1]["context"]["span_id"]


def test_the_metrics_endpoint_serves_the_process_metrics() -> None:
    TTFT.labels(service="router", path="module").observe(0.2)
    ROUTE_DECISIONS.labels(path="module", basis="rule").inc()
    REQUESTS.labels(service="cag.v1.RouterService", method="Generate", code="OK").inc()
    port = serve_metrics("127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'cag_ttft_seconds_count{path="module",service="router"}' in text
    assert 'cag_route_decisions_total{basis="rule",path="module"}' in text
    assert 'cag_requests_total{code="OK",method="Generate",service="cag.v1.RouterService"}' in text
