"""The compiler app serves its Prometheus metrics when a port is configured: jobs by outcome and trigger, their
duration, the jobs waiting and running, and the RPCs it answered (real registry, tiny engine)."""

from __future__ import annotations

import asyncio

import pytest

from cag.infra.ports import free_port
from cag.v1 import compiler_pb2
from tests.integration.compiler.conftest import PUBLIC, Services
from tests.integration.compiler.test_compiler_service import compile_all, job_failure
from tests.support.metrics import sample, scrape

SUCCEEDED = 'cag_compile_jobs_total{outcome="succeeded",trigger="request"}'
FAILED = 'cag_compile_jobs_total{outcome="failed",trigger="request"}'


@pytest.fixture
def compiler_extra() -> tuple[dict[str, str], dict[str, str]]:
    return {}, {"metrics_port": str(free_port())}


async def test_the_compiler_counts_its_jobs_by_outcome_and_serves_them(services: Services) -> None:
    port = services.compiler.settings.metrics_port
    before = await asyncio.to_thread(scrape, port)
    messages = await compile_all(services, services.request("shared", PUBLIC))
    assert messages[-1].WhichOneof("event") == "finished"
    failed = await job_failure(services, services.request("shared", PUBLIC, model="no-such-model"))
    assert failed.state == compiler_pb2.JOB_STATE_FAILED
    after = await asyncio.to_thread(scrape, port)
    assert sample(after, SUCCEEDED) - sample(before, SUCCEEDED) == 1
    assert sample(after, FAILED) - sample(before, FAILED) == 1
    duration = 'cag_compile_seconds_count{outcome="succeeded"}'
    assert sample(after, duration) - sample(before, duration) == 1
    assert (sample(after, "cag_compile_jobs_running"), sample(after, "cag_compile_jobs_waiting")) == (0, 0)
    assert 'cag_requests_total{code="OK",method="Compile",service="cag.v1.CompilerService"}' in after
