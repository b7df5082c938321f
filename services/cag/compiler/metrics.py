"""The compiler's Prometheus metrics: jobs finished by outcome and what started them, how long they ran, and the
jobs queued and running in this process (read at scrape time)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cag.compiler.core.jobs import Job
from cag.compiler.runner import Compiler
from cag.telemetry.metrics import REGISTRY

COMPILE_JOBS = Counter(
    "cag_compile_jobs",
    "Compile jobs this process finished, by outcome (succeeded, failed) and trigger (request, event)",
    ["outcome", "trigger"],
    registry=REGISTRY,
)
COMPILE_SECONDS = Histogram(
    "cag_compile_seconds",
    "From a compile job's start on a worker to its end",
    ["outcome"],
    buckets=(1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
    registry=REGISTRY,
)


def record_finished(job: Job) -> None:
    """A Compiler.on_finished callback. A trigger is "request" or the event that started a recompile (its subject
    and id): counted as "event", so that no label grows with every event."""
    outcome = job.state.value
    COMPILE_JOBS.labels(outcome=outcome, trigger="request" if job.trigger == "request" else "event").inc()
    if job.started_at is not None and job.finished_at is not None:
        COMPILE_SECONDS.labels(outcome=outcome).observe((job.finished_at - job.started_at).total_seconds())


class CompilerCollector(Collector):
    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cag_compile_jobs_waiting", "Compile jobs of this process waiting for a worker", value=self.compiler.waiting
        )
        yield GaugeMetricFamily(
            "cag_compile_jobs_running", "Compile jobs of this process on a worker now", value=self.compiler.running
        )
