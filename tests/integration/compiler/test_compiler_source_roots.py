"""The compiler service with source roots (CAG_SOURCE_ROOTS): a tenant's compile reads only from that tenant's
folder, refused before any job exists otherwise (real gRPC, real registry, tiny engine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from cag.v1 import common_pb2, compiler_pb2
from tests.integration.compiler.conftest import ACME, Services
from tests.integration.compiler.test_compiler_service import compile_all


@pytest.fixture
def compiler_extra(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    return {"source_roots": f"{(tmp_path / 'knowledge').as_uri()}/{{tenant}}/"}, {}


async def test_a_tenant_compiles_from_its_own_folder_only(services: Services) -> None:
    elsewhere = services.request("billing", ACME)  # knowledge/billing: in no tenant's folder
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await compile_all(services, elsewhere)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "source_uri" in (refused.value.details() or "") and "tenant 'acme'" in (refused.value.details() or "")
    stub, channel = services.stub()
    try:
        jobs = await stub.ListJobs(compiler_pb2.ListJobsRequest())
    finally:
        await channel.close()  # type: ignore[attr-defined]
    assert list(jobs.jobs) == []  # refused before a job was recorded
    shutil.copytree(services.knowledge / "billing", services.knowledge / "acme" / "billing")
    own = services.request("acme/billing", ACME)
    messages = await compile_all(services, own)
    assert messages[-1].finished.state == common_pb2.MODULE_STATE_PUBLISHED
