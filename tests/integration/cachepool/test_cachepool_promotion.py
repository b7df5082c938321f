"""Promotion and pins through the real pool: a module found on the local disk earns a copy in host RAM only after
the hits the promotion rule asks for (fewer on a confident route), and a system parent is pinned on its first use
and stays in its tiers under pressure that evicts it once unpinned."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from cag.cachepool.app import CachePoolApp
from cag.cachepool.core import Tier
from cag.engine import Engine
from cag.kvmodule import ModuleFile
from cag.models import TINY
from cag.v1 import common_pb2
from tests.conftest import KNOWLEDGE, PASSING_GOLDEN, compile_example
from tests.infra_fixtures import Infra
from tests.integration.cachepool.conftest import Pool, pool_settings
from tests.integration.cachepool.test_cachepool_edges import ask, drain, until_caught_up
from tests.integration.cachepool.test_cachepool_serving import publish_chain
from tests.registry_server import RegistryServer, fails

ENGINE, RAM, DISK = Tier.ENGINE, Tier.HOST_RAM, Tier.LOCAL_DISK


@pytest.fixture(scope="module")
def public_root(tmp_path_factory: pytest.TempPathFactory, tiny_engine: Engine, models_dir: Path) -> Path:
    """The demo's shared source compiled public and parentless: a system parent, publishable (PASSING_GOLDEN)."""
    work = tmp_path_factory.mktemp("public-root")
    shutil.copytree(KNOWLEDGE / "shared", work / "shared")
    (work / "shared" / "golden.json").write_text(json.dumps(PASSING_GOLDEN))
    result = compile_example(
        work / "shared", work / "out", model=TINY, engine=tiny_engine, models_dir=models_dir, acl="public"
    )
    assert result.path is not None
    return result.path


@asynccontextmanager
async def running_pool(
    registry: RegistryServer, infra: Infra, engine: Engine, disk: Path, models_dir: Path, **overrides: object
) -> AsyncIterator[Pool]:
    settings = pool_settings(registry, infra, disk, CAG_CACHEPOOL_HOME=models_dir.parent, **overrides)
    app = CachePoolApp(settings, engine=engine)  # type: ignore[arg-type]
    await app.start()
    try:
        yield Pool(app=app, registry=registry, address=settings.address, key=registry.key)
    finally:
        await app.stop()


def served_from(events: list[common_pb2.GenerateResponse]) -> dict[str, int]:
    """Each module's tier in the answer's summary: where the request found it."""
    [done] = [e.done for e in events if e.HasField("done")]
    return {m.module_id: m.tier for m in done.modules}


async def test_a_module_found_on_disk_earns_host_ram_only_after_the_hits_the_rule_asks_for(
    registry: RegistryServer, infra: Infra, tiny_engine: Engine, tmp_path: Path, models_dir: Path,
    servable_chain: tuple[Path, Path],
) -> None:  # fmt: skip
    rule = {"promote_ram_min_hits": 3, "promote_engine_min_hits": 10}  # the route sends no confidence: these apply
    async with running_pool(registry, infra, tiny_engine, tmp_path / "disk", models_dir, **rule) as pool:
        chain = await publish_chain(pool, servable_chain)
        child = chain[-1]
        async with pool.client() as router:
            await router.prefetch(chain, common_pb2.TIER_LOCAL_DISK)  # cold: on the local disk only, no hit yet
            for hit in (1, 2, 3):
                served = served_from(await drain(router.generate(ask(chain))))
                assert served[child] == common_pb2.TIER_LOCAL_DISK, hit
                assert pool.core.residency.hits_last_15m(child, pool.core.now()) == hit
                if hit < 3:  # not copied into host RAM, and the engine's copy served that request only
                    assert pool.core.residency.resident_tiers(child) == (DISK,), hit
            # The third hit earned host RAM (restored from the new copy), not yet the engine (10 hits).
            assert pool.core.residency.resident_tiers(child) == (RAM, DISK)
            served = served_from(await drain(router.generate(ask(chain))))
            assert served[child] == common_pb2.TIER_HOST_RAM


async def test_a_confident_route_earns_host_ram_on_fewer_hits(
    registry: RegistryServer, infra: Infra, tiny_engine: Engine, tmp_path: Path, models_dir: Path,
    servable_chain: tuple[Path, Path],
) -> None:  # fmt: skip
    rule = {"promote_ram_min_hits": 3, "promote_confident_at": 0.8, "promote_confident_ram_min_hits": 1}
    async with running_pool(registry, infra, tiny_engine, tmp_path / "disk", models_dir, **rule) as pool:
        chain = await publish_chain(pool, servable_chain)
        async with pool.client() as router:
            await router.prefetch(chain, common_pb2.TIER_LOCAL_DISK)
            sure = ask(chain)
            sure.route_confidence = 0.9
            await drain(router.generate(sure))
            assert pool.core.residency.resident_tiers(chain[-1]) == (RAM, DISK)  # on its first hit
            unsure = ask(chain)
            unsure.route_confidence = 1.5
            await fails(drain(router.generate(unsure)), grpc.StatusCode.INVALID_ARGUMENT, field="route_confidence")


async def test_a_system_parent_is_pinned_on_its_first_use_and_stays_under_pressure(
    registry: RegistryServer, infra: Infra, tiny_engine: Engine, tmp_path: Path, models_dir: Path,
    public_root: Path, servable_chain: tuple[Path, Path],
) -> None:  # fmt: skip
    tenant_root = servable_chain[0]  # acme's own root: no system parent, never pinned by the pool
    sizes = [ModuleFile.open(p).token_count * tiny_engine.kv_shape.bytes_per_token for p in (public_root, tenant_root)]
    # Host RAM holds either module but not both: the second to enter must evict the first. Under LRU the first
    # (least recently used) is the victim, unless it is pinned.
    budget = {"host_ram_budget_bytes": sum(sizes) - 1, "eviction_policy": "lru"}
    async with running_pool(registry, infra, tiny_engine, tmp_path / "disk", models_dir, **budget) as pool:
        system = (await pool.publish(public_root)).module_id
        other = (await pool.publish(tenant_root)).module_id
        await until_caught_up(pool)
        async with pool.client() as router:
            await drain(router.generate(ask([system])))  # its first use: found at the origin
            resident = pool.core.view(system)
            assert resident is not None
            assert (resident.pinned, resident.tiers) == (True, (ENGINE, RAM, DISK))
            await fails(
                router.prefetch([other], common_pb2.TIER_HOST_RAM),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                reason="TIER_FULL",
            )
            for _ in range(2):  # the second hit earns it host RAM, where there is no room: served from the disk
                served = served_from(await drain(router.generate(ask([other]))))
                assert served[other] == common_pb2.TIER_LOCAL_DISK
            assert pool.core.residency.resident_tiers(system) == (ENGINE, RAM, DISK)
            assert pool.core.residency.resident_tiers(other) == (DISK,)
            # The same pressure once it is unpinned: LRU evicts it from host RAM.
            await router.pin(system, pinned=False)
            await router.prefetch([other], common_pb2.TIER_HOST_RAM)
            assert RAM not in pool.core.residency.resident_tiers(system)
            assert RAM in pool.core.residency.resident_tiers(other)
