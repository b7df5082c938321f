"""Tracing (OpenTelemetry) and metrics (Prometheus) for every service."""

from cag.telemetry.tracing import (
    TelemetrySettings,
    aio_channel_interceptors,
    configure_tracing,
    current_trace_id,
    record_span,
    server_interceptor,
    shutdown_tracing,
    span,
    traced_channel,
    tracer,
)

__all__ = [
    "TelemetrySettings",
    "aio_channel_interceptors",
    "configure_tracing",
    "current_trace_id",
    "record_span",
    "server_interceptor",
    "shutdown_tracing",
    "span",
    "traced_channel",
    "tracer",
]
