"""OpenTelemetry tracing, configured once per process, and the gRPC interceptors that carry a trace across
services (client → router → cache pool share one trace: the W3C traceparent travels in gRPC metadata).

Where spans go (CAG_TRACES): `otlp` to the collector OTEL_EXPORTER_OTLP_ENDPOINT names (the exporter reads its
OTEL_* settings itself), `console` as JSON on stderr, `file` as one JSON object per line appended to
CAG_TRACES_FILE, `off` nowhere; `auto` (the default) is `otlp` when the endpoint is set, else `file` when a
file is named, else `console`.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import grpc
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_lock = threading.Lock()
_provider: TracerProvider | None = None
_attached: list[SpanExporter] = []  # exporters given to configure_tracing, each attached once


class TelemetrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAG_")

    traces: Literal["auto", "otlp", "console", "file", "off"] = "auto"
    traces_file: Path | None = None
    otlp_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")

    @property
    def destination(self) -> str:
        if self.traces != "auto":
            return self.traces
        if self.otlp_endpoint:
            return "otlp"
        return "file" if self.traces_file is not None else "console"


class JsonLinesExporter(SpanExporter):
    """Spans appended to a file, one JSON object per line (what a test or a shell tool reads back)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(json.loads(s.to_json()), separators=(",", ":")) + "\n" for s in spans)
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


def configure_tracing(
    service_name: str, *, settings: TelemetrySettings | None = None, exporter: SpanExporter | None = None
) -> TracerProvider:
    """The process's tracer provider, set once: later calls return the first one, named as the first call said.

    `exporter`: where spans go instead of what the settings say (tests pass an InMemorySpanExporter). An exporter
    that a later call passes is attached to the same provider (once) and gets the spans that end from then on:
    the global provider cannot be replaced, so tests that each bring their own exporter would otherwise see
    none."""
    global _provider
    with _lock:
        if _provider is None:
            _provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            if exporter is None:
                chosen = exporter_for(settings or TelemetrySettings())
                if chosen is not None:
                    _provider.add_span_processor(BatchSpanProcessor(chosen))
            trace.set_tracer_provider(_provider)
        if exporter is not None and exporter not in _attached:
            _provider.add_span_processor(SimpleSpanProcessor(exporter))
            _attached.append(exporter)
        return _provider


def exporter_for(settings: TelemetrySettings) -> SpanExporter | None:
    """The exporter the settings choose (None: CAG_TRACES=off). Console spans go to stderr, never into the
    output of a command that prints its answer on stdout."""
    match settings.destination:
        case "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        case "file":
            if settings.traces_file is None:
                raise ValueError("CAG_TRACES=file needs CAG_TRACES_FILE")
            return JsonLinesExporter(settings.traces_file)
        case "console":
            return ConsoleSpanExporter(out=sys.stderr)
    return None


def shutdown_tracing() -> None:
    """Export what is buffered (a process about to exit)."""
    if _provider is not None:
        _provider.force_flush()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


@contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[trace.Span]:
    """A span of the current trace named `name`, with the attributes that are not None."""
    with trace.get_tracer("cag").start_as_current_span(name) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        yield current


def record_span(name: str, start_s: float, end_s: float, **attributes: str | int | float | bool | None) -> None:
    """A finished span of the current trace for work timed elsewhere (an engine's thread): times are
    time.time() readings."""
    recorded = trace.get_tracer("cag").start_span(name, start_time=int(start_s * 1e9))
    for key, value in attributes.items():
        if value is not None:
            recorded.set_attribute(key, value)
    recorded.end(end_time=int(end_s * 1e9))


def current_trace_id() -> str:
    """The current trace's id (32 hex digits), "" outside any trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def server_interceptor() -> grpc.aio.ServerInterceptor[Any, Any]:
    """A server span per RPC, continuing the caller's trace."""
    interceptor: grpc.aio.ServerInterceptor[Any, Any] = aio_server_interceptor()  # type: ignore[no-untyped-call]
    return interceptor


def aio_channel_interceptors() -> list[Any]:
    """Client spans for a grpc.aio channel, passing the trace on."""
    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


if TYPE_CHECKING:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:  # the runtime classes are not generic
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor


class _TraceContext(_UnaryUnary, _UnaryStream):
    """A client span for each blocking call, whose context travels in the call's metadata (traceparent).

    OpenTelemetry's own blocking-channel wrapper hands back plain generators for streams, which cannot be
    cancelled; a grpc interceptor keeps gRPC's call objects."""

    def _start(self, details: grpc.ClientCallDetails) -> tuple[trace.Span, _CallDetails]:
        method = str(details.method)
        started = trace.get_tracer("cag").start_span(method.lstrip("/"), kind=trace.SpanKind.CLIENT)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(started))
        metadata = [*(details.metadata or ()), *carrier.items()]
        return started, _CallDetails(
            method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        started, details = self._start(client_call_details)
        try:
            return continuation(details, request)
        finally:
            started.end()

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        started, details = self._start(client_call_details)
        try:
            return continuation(details, request)  # the stream's call object, cancellable as ever
        finally:
            started.end()


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """A blocking channel whose calls get client spans and pass the trace on."""
    return grpc.intercept_channel(channel, _TraceContext())
