"""The cache pool serving real modules over real gRPC: withdrawals leave every tier, a damaged copy is never
served and gets its module quarantined, the disk tier survives a restart, and the request queue is bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path

import grpc

from cag.cachepool.app import CachePoolApp
from cag.engine import Engine
from cag.infra.ports import free_port
from cag.rpc.errors import decode_error_details, retry_delay_s
from cag.v1 import cachepool_pb2, common_pb2, registry_pb2
from tests.infra_fixtures import Infra
from tests.integration.cachepool.conftest import Pool, pool_settings
from tests.integration.cachepool.test_cachepool_edges import ask, drain, until_caught_up
from tests.registry_server import RegistryServer, fails


async def publish_chain(pool: Pool, chain: tuple[Path, Path]) -> list[str]:
    ids = [(await pool.publish(path)).module_id for path in chain]
    await until_caught_up(pool)
    return ids


async def outcome_of(
    call: Awaitable[list[common_pb2.GenerateResponse]],
) -> list[common_pb2.GenerateResponse] | grpc.aio.AioRpcError:
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        return e


async def resident_ids(pool: Pool) -> set[str]:
    async with pool.client() as router:
        return {m.module_id for m in (await router.stats()).modules}


async def test_an_invalidated_module_leaves_every_tier_and_is_no_longer_served(
    pool: Pool, servable_chain: tuple[Path, Path]
) -> None:
    ids = await publish_chain(pool, servable_chain)
    async with pool.client() as router:
        await drain(router.generate(ask(ids)))
        await router.prefetch([ids[-1]], common_pb2.TIER_HOST_RAM)
        assert ids[-1] in await resident_ids(pool)
        trigger = registry_pb2.InvalidateRequest(module=registry_pb2.ModuleTrigger(module_id=ids[-1]), reason="t")
        await pool.registry.admin().stub.Invalidate(trigger)
        async with asyncio.timeout(10):  # the event (or the feed) arrives: wait for the drop, never a fixed sleep
            while ids[-1] in await resident_ids(pool):
                await asyncio.sleep(0.01)
        await fails(drain(router.generate(ask(ids))), grpc.StatusCode.FAILED_PRECONDITION, reason="MODULE_NOT_SERVABLE")
        assert (await router.stats()).invalidations >= 1
        assert ids[0] in await resident_ids(pool)  # the parent is untouched


async def test_a_damaged_disk_copy_is_never_served_and_its_module_is_quarantined(
    pool: Pool, servable_chain: tuple[Path, Path]
) -> None:
    ids = await publish_chain(pool, servable_chain)
    async with pool.client() as router:
        reference = [e.token.token_ids[0] for e in await drain(router.generate(ask(ids))) if e.HasField("token")]
        await router.prefetch([ids[-1]], common_pb2.TIER_LOCAL_DISK)
        copy = pool.core.disk.path_of(ids[-1])
        data = bytearray(copy.read_bytes())
        data[-100] ^= 0x01  # one bit of the last layer's rows
        copy.write_bytes(bytes(data))
        for tier in (common_pb2.TIER_ENGINE, common_pb2.TIER_HOST_RAM):
            await router.evict(ids[-1], tier)
        outcome = await outcome_of(drain(router.generate(ask(ids))))
        # Failing closed is allowed; a wrong answer is not. The pool quarantines the module as it finds the bad
        # copy: when the registry's feed brings that back before the retry from the origin, the module is no
        # longer served at all (MODULE_NOT_SERVABLE) rather than DATA_LOSS.
        if isinstance(outcome, grpc.aio.AioRpcError):
            details = decode_error_details(outcome.trailing_metadata())
            assert details is not None
            assert (outcome.code(), details.reason) in {
                (grpc.StatusCode.DATA_LOSS, "MODULE_CORRUPTED"),
                (grpc.StatusCode.FAILED_PRECONDITION, "MODULE_NOT_SERVABLE"),
            }
        else:
            assert [e.token.token_ids[0] for e in outcome if e.HasField("token")] == reference
    record = await pool.registry.admin().get(ids[-1])
    assert record.state == common_pb2.MODULE_STATE_QUARANTINED
    assert "disk" in record.state_reason


async def test_the_disk_tier_is_reindexed_after_a_restart(
    pool: Pool,
    servable_chain: tuple[Path, Path],
    registry: RegistryServer,
    infra: Infra,
    tiny_engine: Engine,
    models_dir: Path,
) -> None:
    ids = await publish_chain(pool, servable_chain)
    async with pool.client() as router:
        await router.prefetch(ids, common_pb2.TIER_LOCAL_DISK)
    disk = pool.core.disk.path_of(ids[0]).parent
    settings = pool_settings(
        registry, infra, disk, CAG_CACHEPOOL_HOME=models_dir.parent, address=f"127.0.0.1:{free_port()}"
    )
    restarted = CachePoolApp(settings, engine=tiny_engine)  # type: ignore[arg-type]
    await restarted.start()
    try:
        assert restarted.pool is not None
        async with asyncio.timeout(10):
            while not restarted.pool.snapshot.caught_up:
                await asyncio.sleep(0.02)
        tiers = {m.module_id: set(m.tiers) for m in restarted.pool.residency.stats(restarted.pool.now()).modules}
        assert all("LOCAL_DISK" in {t.name for t in tiers[i]} for i in ids)
    finally:
        await restarted.stop()


async def test_a_full_queue_answers_resource_exhausted_and_a_cancelled_client_frees_its_slot(
    registry: RegistryServer, infra: Infra, tiny_engine: Engine, tmp_path: Path, models_dir: Path,
    servable_chain: tuple[Path, Path],
) -> None:  # fmt: skip
    settings = pool_settings(
        registry, infra, tmp_path / "disk", CAG_CACHEPOOL_HOME=models_dir.parent, max_running=1, max_queued=0,
        default_max_new_tokens=200,
    )  # fmt: skip
    app = CachePoolApp(settings, engine=tiny_engine)  # type: ignore[arg-type]
    await app.start()
    try:
        pool = Pool(app=app, registry=registry, address=settings.address, key=registry.key)
        ids = await publish_chain(pool, servable_chain)
        long_answer = cachepool_pb2.CachePoolGenerateRequest(
            module_ids=ids,
            query="How do refunds work?",
            tenant_id="acme",
            sampling=common_pb2.SamplingParams(max_new_tokens=200),
        )
        async with pool.client() as router:
            first = router.generate(long_answer)
            await anext(aiter(first))  # running: it holds the only slot
            with_retry = await fails(drain(router.generate(ask(ids))), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert (retry_delay_s(with_retry) or 0) > 0
            first.cancel()
            began = time.perf_counter()
            async with asyncio.timeout(30):  # the slot is free again: a new request runs
                while isinstance(outcome := await outcome_of(drain(router.generate(ask(ids)))), grpc.aio.AioRpcError):
                    assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the cancelled call still leaving
                    await asyncio.sleep(0.01)
            assert time.perf_counter() - began < 30
    finally:
        await app.stop()
