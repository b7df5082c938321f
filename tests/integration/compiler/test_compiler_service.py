"""The compiler service over real gRPC, with a real registry (Postgres, outbox to NATS) and the tiny engine:
jobs streamed and recorded, one job per key, bad input named, and modules rebuilt on their own when their
source changes — or the route left on the fallback path with `cag.compile.failed` when the rebuild fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import nats
import pytest

from cag.canonical import load_source, source_checksum
from cag.cli.invalidate_cmd import publish
from cag.errors import UnavailableError
from cag.events.schemas import Envelope, ModuleInvalidatedV1, SourceChangedV1
from cag.layout import load_layout
from cag.v1 import common_pb2, compiler_pb2, registry_pb2
from tests.infra_fixtures import Infra
from tests.integration.compiler.conftest import ACME, LAYOUT, PUBLIC, Services

WAIT_S = 120.0


async def compile_all(services: Services, request: compiler_pb2.CompileRequest) -> list[compiler_pb2.CompileProgress]:
    stub, channel = services.stub()
    try:
        return [message async for message in stub.Compile(request)]
    finally:
        await channel.close()  # type: ignore[attr-defined]


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll until `check` returns something truthy (the services apply events asynchronously)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        try:
            if result := await check():
                return result
        except grpc.aio.AioRpcError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise UnavailableError(f"gave up waiting for {what}")
        await asyncio.sleep(0.2)


async def test_compile_streams_progress_records_the_job_and_publishes(services: Services) -> None:
    messages = await compile_all(services, services.request("shared", PUBLIC))
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[0] == "job_id"
    assert {"stage", "prefill", "golden"} <= set(kinds)
    assert kinds[-1] == "finished"
    module = messages[-1].finished
    assert (module.route, module.version, module.state) == ("shared", 1, common_pb2.MODULE_STATE_PUBLISHED)
    stub, channel = services.stub()
    try:
        job = await stub.GetJob(compiler_pb2.GetJobRequest(job_id=messages[0].job_id))
        listed = await stub.ListJobs(compiler_pb2.ListJobsRequest())
    finally:
        await channel.close()  # type: ignore[attr-defined]
    assert job.state == compiler_pb2.JOB_STATE_SUCCEEDED
    assert job.module.module_id == module.module_id
    assert job.trigger == "request"
    assert any(line.startswith("golden pass") for line in job.logs)
    assert job.started_at.ToDatetime() <= job.finished_at.ToDatetime()
    assert [j.job_id for j in listed.jobs] == [job.job_id]


async def test_the_same_compile_requested_twice_runs_once(services: Services) -> None:
    request = services.request("shared", PUBLIC)
    first, second = await asyncio.gather(compile_all(services, request), compile_all(services, request))
    assert first[0].job_id == second[0].job_id
    assert first[-1].finished.module_id == second[-1].finished.module_id
    again = await compile_all(services, request)  # after it succeeded: the same job answers
    assert again[0].job_id == first[0].job_id
    async with services.registry() as registry:
        versions = [m.version async for m in registry.list_all(registry_pb2.ListModulesRequest(route="shared"))]
    assert versions == [1]


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"source_uri": ""}, "source_uri"), ({"layout_uri": "relative/layout.json"}, "layout_uri"),
     ({"source_uri": "s3://bucket/../../etc"}, "source_uri"), ({"dtype": "fp64"}, "dtype")],
)  # fmt: skip
async def test_a_malformed_request_is_refused_naming_the_field(
    services: Services, fields: dict[str, str], field: str
) -> None:
    request = services.request("shared", PUBLIC)
    for name, value in fields.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await compile_all(services, request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


async def job_failure(services: Services, request: compiler_pb2.CompileRequest) -> compiler_pb2.Job:
    stub, channel = services.stub()
    try:
        stream = stub.Compile(request)
        first = await stream.read()  # type: ignore[attr-defined]
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in stream:
                pass
        return await stub.GetJob(compiler_pb2.GetJobRequest(job_id=first.job_id))
    finally:
        await channel.close()  # type: ignore[attr-defined]


async def test_a_compile_that_cannot_succeed_is_a_failed_job_and_publishes_nothing(services: Services) -> None:
    unknown_model = await job_failure(services, services.request("shared", PUBLIC, model="no-such-model"))
    assert unknown_model.state == compiler_pb2.JOB_STATE_FAILED
    assert "no-such-model" in unknown_model.error.message
    huge = services.knowledge / "huge"
    huge.mkdir()
    (huge / "everything.md").write_text("---\ntitle: Everything\n---\n" + "word " * 20_000)
    too_long = await job_failure(services, services.request("huge", ACME))
    assert too_long.error.info.reason == "CONTEXT_WINDOW_EXCEEDED"
    async with services.registry() as registry:
        assert [m async for m in registry.list_all(registry_pb2.ListModulesRequest())] == []


async def test_a_parent_of_another_layout_fails_the_job_naming_layout_hash(services: Services) -> None:
    parent = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    other_layout = services.knowledge / "other-layout.json"
    layout = json.loads(LAYOUT.read_text())
    layout["version"] = 2
    other_layout.write_text(json.dumps(layout))
    request = services.request("billing", ACME, parent_module_ids=[parent.module_id])
    request.layout_uri = other_layout.as_uri()
    failed = await job_failure(services, request)
    assert failed.state == compiler_pb2.JOB_STATE_FAILED
    assert "layout_hash" in failed.error.message


async def publish_source_change(infra: Infra, services: Services, source: str) -> None:
    path = services.knowledge / source
    checksum = source_checksum(load_source(path, load_layout(LAYOUT).section_order))
    event = Envelope.wrap(SourceChangedV1(tenant_id="acme", source_uri=path.as_uri(), checksum=checksum))
    await publish(infra.nats_url, event, timeout_s=10.0)


async def test_an_edited_source_is_recompiled_and_published_with_no_command(services: Services, infra: Infra) -> None:
    parent = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    child = await compile_all(services, services.request("billing", ACME, parent_module_ids=[parent.module_id]))
    assert child[-1].finished.version == 1
    policy = services.knowledge / "billing" / "refund-policy.md"
    policy.write_text(policy.read_text().replace("30 days", "45 days"))
    await publish_source_change(infra, services, "billing")

    async def new_version() -> common_pb2.Module | None:
        async with services.registry() as registry:
            chain = (await registry.resolve_route("acme", "billing")).chain
        return chain[-1] if chain and chain[-1].version == 2 else None

    rebuilt = await eventually(new_version, "version 2 of acme/billing")
    assert rebuilt.parent_id == parent.module_id
    assert rebuilt.module_id != child[-1].finished.module_id
    stub, channel = services.stub()
    try:
        jobs = (await stub.ListJobs(compiler_pb2.ListJobsRequest(tenant_id="acme"))).jobs
    finally:
        await channel.close()  # type: ignore[attr-defined]
    recompile = [j for j in jobs if j.trigger.startswith("cag.module.invalidated")]
    assert len(recompile) == 1
    assert recompile[0].module.module_id == rebuilt.module_id


async def compile_failure_after(infra: Infra, act: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """The data of the first `cag.compile.failed` event after `act`."""
    failures = await nats.connect(infra.nats_url)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_failure(msg: Any) -> None:
        await received.put(msg.data)

    await failures.subscribe("cag.compile.failed", cb=on_failure)
    try:
        await act()
        data: dict[str, Any] = json.loads(await asyncio.wait_for(received.get(), WAIT_S))["data"]
        return data
    finally:
        await failures.close()


async def billing_states(services: Services) -> list[tuple[int, int]]:
    async with services.registry() as registry:
        modules = [m async for m in registry.list_all(registry_pb2.ListModulesRequest(route="billing"))]
    return [(m.version, m.state) for m in modules]


async def test_a_recompile_whose_golden_questions_fail_leaves_the_route_on_fallback(
    services: Services, infra: Infra
) -> None:
    parent = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    old = await compile_all(services, services.request("billing", ACME, parent_module_ids=[parent.module_id]))

    async def edit() -> None:
        policy = services.knowledge / "billing" / "refund-policy.md"
        policy.write_text(policy.read_text().replace("30 days", "45 days"))  # the source changes...
        golden = services.knowledge / "billing" / "golden.json"  # ...and its new golden question cannot pass
        golden.write_text(json.dumps([{"question": "How much do widgets cost?", "expect": ["qqqzzzxxx"]}]))
        await publish_source_change(infra, services, "billing")

    failure = await compile_failure_after(infra, edit)
    assert failure["module_id"] == old[-1].finished.module_id
    assert "golden" in failure["reason"].lower()
    assert await billing_states(services) == [(1, common_pb2.MODULE_STATE_STALE)]


async def test_a_source_event_whose_checksum_is_not_the_contents_fails_the_recompile_saying_so(
    services: Services, infra: Infra
) -> None:
    parent = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    old = await compile_all(services, services.request("billing", ACME, parent_module_ids=[parent.module_id]))
    source = (services.knowledge / "billing").as_uri()

    async def claim_a_change() -> None:  # typed by hand: nothing in the folder changed
        event = Envelope.wrap(SourceChangedV1(tenant_id="acme", source_uri=source, checksum="ab" * 32))
        await publish(infra.nats_url, event, timeout_s=10.0)

    failure = await compile_failure_after(infra, claim_a_change)
    assert failure["module_id"] == old[-1].finished.module_id
    assert "identical" in failure["reason"] and "did not change" in failure["reason"]
    assert await billing_states(services) == [(1, common_pb2.MODULE_STATE_STALE)]


async def test_duplicate_and_replayed_invalidations_compile_once(services: Services) -> None:
    parent = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    document = next((services.knowledge / "shared").glob("*.md"))
    document.write_text(document.read_text() + "\n\nAlways greet the customer.\n")
    event = ModuleInvalidatedV1(
        module_id=parent.module_id, tenant_id="public", route="shared", version=1, state="stale",
        reason="source: edited",
    )  # fmt: skip
    first, duplicate = Envelope.wrap(event), Envelope.wrap(event)  # the same news under two event ids
    recompiler = services.compiler.recompiler
    assert recompiler is not None
    for envelope in (first, first, duplicate):  # a replay of the first, then the duplicate
        await recompiler.on_module_event(envelope, event)
    stub, channel = services.stub()
    try:
        jobs = (await stub.ListJobs(compiler_pb2.ListJobsRequest())).jobs
        recompiles = [j for j in jobs if j.trigger != "request"]
        assert len(recompiles) == 1
        assert services.compiler.compiler is not None
        await services.compiler.compiler.wait(recompiles[0].job_id)
        done = await stub.GetJob(compiler_pb2.GetJobRequest(job_id=recompiles[0].job_id))
    finally:
        await channel.close()  # type: ignore[attr-defined]
    assert done.state == compiler_pb2.JOB_STATE_SUCCEEDED
    assert done.module.version == 2


async def test_sources_sync_publishes_the_changed_sources_and_the_compiler_rebuilds_them(
    services: Services, infra: Infra, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cag.cli.main import main

    parent = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    await compile_all(services, services.request("billing", ACME, parent_module_ids=[parent.module_id]))
    policy = services.knowledge / "billing" / "refund-policy.md"
    policy.write_text(policy.read_text().replace("30 days", "45 days"))
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(services.key_file))
    monkeypatch.delenv("CAG_TOKEN", raising=False)
    argv = ["sources", "sync", "--registry", services.registry_address, "--nats", infra.nats_url]
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "1 changed" in out
    assert "published" in out

    async def rebuilt() -> bool:
        async with services.registry() as registry:
            chain = (await registry.resolve_route("acme", "billing")).chain
        return bool(chain) and chain[-1].version == 2

    await eventually(rebuilt, "the compiler to publish acme/billing v2")
    assert await asyncio.to_thread(main, [*argv, "--dry-run"]) == 0  # now everything is as compiled
    assert "0 changed" in capsys.readouterr().out
