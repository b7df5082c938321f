"""Tracing (OpenTelemetry) and metrics (Prometheus) for every service."""
