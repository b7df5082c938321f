"""configure_tracing sets one provider per process and attaches each exporter once; span() sets attributes;
console spans stay off stdout."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cag.telemetry import TelemetrySettings, configure_tracing, current_trace_id, span
from cag.telemetry.tracing import exporter_for


def test_configure_tracing_sets_one_provider_and_attaches_each_exporter_once() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    provider = configure_tracing("cag-tests", exporter=first)
    name = provider.resource.attributes["service.name"]
    assert configure_tracing("cag-other", exporter=second) is provider
    assert configure_tracing("cag-tests", exporter=first) is provider
    assert trace.get_tracer_provider() is provider
    assert provider.resource.attributes["service.name"] == name  # the first call named the process
    with span("step"):
        pass
    assert [s.name for s in first.get_finished_spans()] == ["step"]  # once, though passed twice
    assert [s.name for s in second.get_finished_spans()] == ["step"]


def test_span_sets_the_attributes_given_and_skips_none() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing("cag-tests", exporter=exporter)
    with span("cachepool.load", tier="host_ram", module_id="m-1", tokens=12, hit=True, parent_id=None):
        trace_id = current_trace_id()
    [finished] = exporter.get_finished_spans()
    assert finished.name == "cachepool.load"
    assert dict(finished.attributes or {}) == {"tier": "host_ram", "module_id": "m-1", "tokens": 12, "hit": True}
    assert finished.context is not None and f"{finished.context.trace_id:032x}" == trace_id
    assert current_trace_id() == ""  # outside any span again


def test_console_spans_go_to_stderr_and_off_means_nowhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert exporter_for(TelemetrySettings(traces="off")) is None
    console = exporter_for(TelemetrySettings(traces="console"))
    assert console is not None
    with span("printed") as current:
        pass
    console.export([current])  # type: ignore[list-item]  # the SDK's span is a ReadableSpan
    printed = capsys.readouterr()
    assert printed.out == ""
    assert '"name": "printed"' in printed.err
