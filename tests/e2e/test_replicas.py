"""Several cache-pool replicas behind one router, each replica a process of its own (the torch engine, the tiny
model), found through their announcements: a request goes to the replica already holding its chain, and a replica
killed (SIGKILL) while it streams an answer gives the client a clear, retryable UNAVAILABLE, after which the next
request is served by a healthy replica."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, issue_user_token, load_key
from cag.infra.ports import free_port
from cag.models import TINY
from cag.registry.core import RegistryCore
from cag.registry.db.store import PostgresStore
from cag.router.app import RouterApp
from cag.router.core.replicas import ReplicaBasis
from cag.router.settings import RouterSettings
from cag.rpc.clients import AsyncCachePoolClient, AsyncRouterClient
from cag.rpc.errors import error_details, retry_delay_s
from cag.v1 import common_pb2, registry_pb2, router_pb2
from tests.e2e.conftest import ROUTE, TENANT, publish
from tests.infra_fixtures import Infra
from tests.registry_server import serve_registry

QUESTION = "How do refunds work?"  # the rule "refunds" picks the billing route
START_TIMEOUT_S = 180.0


@dataclass
class Replica:
    replica_id: str
    address: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Replicated:
    router: RouterApp
    router_address: str
    replicas: dict[str, Replica]
    key: bytes
    module_ids: list[str]

    def user_token(self) -> str:
        return issue_user_token(self.key, TENANT, 600, user="alice")

    def pool_client(self, replica_id: str) -> AsyncCachePoolClient:
        token = issue_token(self.key, "service:router", [Scope.READ], [ALL_TENANTS], 600)
        return AsyncCachePoolClient(self.replicas[replica_id].address, token=token)

    def healthy(self) -> set[str]:
        assert self.router.replicas is not None
        order = self.router.replicas.directory.views()
        now = time.monotonic()
        return {v.replica_id for v in order if v.healthy(now, self.router.settings.replica_stale_after_s)}


def start_replica(
    replica_id: str, infra: Infra, registry_address: str, models_dir: Path, work: Path, **extra: str
) -> Replica:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "CAG_CACHEPOOL_ADDRESS": address,
        "CAG_CACHEPOOL_REGISTRY_ADDRESS": registry_address,
        "CAG_CACHEPOOL_MODEL": TINY,
        "CAG_CACHEPOOL_HOME": str(models_dir.parent),
        "CAG_CACHEPOOL_CACHE_DIR": str(work / replica_id),
        "CAG_CACHEPOOL_NATS_URL": infra.nats_url_for("cachepool"),
        "CAG_CACHEPOOL_AUTH_KEY_FILE": str(infra.auth_key_file),
        "CAG_CACHEPOOL_INSTANCE": replica_id,
        "CAG_CACHEPOOL_ENGINE": "torch",
        "CAG_CACHEPOOL_NUM_THREADS": "1",
        **extra,
    }
    log = work / f"{replica_id}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cag.cachepool"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Replica(replica_id=replica_id, address=address, process=process, log=log)


async def until(condition: Callable[[], bool], what: str, replicas: dict[str, Replica], timeout_s: float) -> None:
    """Waits for `condition` (a sentinel), failing with the replicas' logs when a replica exits or time runs out."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        exited = [r for r in replicas.values() if r.process.poll() is not None and r.process.returncode != -9]
        if exited or asyncio.get_running_loop().time() > deadline:
            logs = "\n".join(f"--- {r.replica_id}\n{r.log.read_text()[-3000:]}" for r in replicas.values())
            pytest.fail(f"{what}: not reached\n{logs}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def replicated(
    store: PostgresStore, infra: Infra, servable_chain: tuple[Path, Path], tmp_path: Path, models_dir: Path
) -> AsyncIterator[Replicated]:
    if not infra.nats_permissions_enforced:
        pytest.skip("the replicas announce as the cachepool identity of the NATS server these tests start")
    key = load_key(infra.auth_key_file)
    async with serve_registry(RegistryCore(store), key=key) as registry:
        module_ids = [(await publish(registry, path)).module_id for path in servable_chain]
        rules = registry_pb2.PutRouteRulesRequest(
            tenant_id=TENANT,
            routes=[registry_pb2.RouteInfo(route=ROUTE, description="invoices and refunds")],
            rules=[registry_pb2.RouteRule(rule_id="refunds", route=ROUTE, keywords=["refund", "refunds"])],
        )
        await registry.admin().stub.PutRouteRules(rules)
        suffix = f"{free_port()}"
        replicas = {
            r.replica_id: r
            for r in (
                start_replica(f"e2e-a{suffix}", infra, registry.address, models_dir, tmp_path),
                start_replica(f"e2e-b{suffix}", infra, registry.address, models_dir, tmp_path),
            )
        }
        router_address = f"127.0.0.1:{free_port()}"
        router = RouterApp(
            RouterSettings(
                address=router_address,
                registry_address=registry.address,
                replica_discovery=True,
                instance=f"t{free_port()}",
                infra={"nats_url": infra.nats_url_for("router"), "auth_key_file": infra.auth_key_file},  # type: ignore[arg-type]
            )
        )
        await router.start()
        platform = Replicated(router, router_address, replicas, key, module_ids)
        try:
            await until(
                lambda: platform.healthy() >= set(replicas), "both replicas announced", replicas, START_TIMEOUT_S
            )
            yield platform
        finally:
            await router.stop()
            for replica in replicas.values():
                if replica.process.poll() is None:
                    replica.process.terminate()
            for replica in replicas.values():
                replica.process.wait(timeout=30)


def ask(max_new_tokens: int) -> router_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_new_tokens=max_new_tokens)
    return router_pb2.GenerateRequest(tenant_id=TENANT, query=QUESTION, sampling=sampling)


async def hits(platform: Replicated, replica_id: str) -> dict[int, int]:
    """Lookups each tier answered (the object store's: those no cache tier could)."""
    async with platform.pool_client(replica_id) as pool:
        stats = await pool.stats()
    return {t.tier: t.hits for t in stats.tiers}


async def test_a_request_goes_to_the_replica_holding_its_chain(replicated: Replicated) -> None:
    assert replicated.router.replicas is not None
    cold = replicated.router.replicas.order(replicated.module_ids)
    assert cold.basis is ReplicaBasis.HASH
    holder = cold.replica_ids[1]  # not where the ring would send the chain: only what it holds makes it first
    async with replicated.pool_client(holder) as pool:
        await pool.prefetch(replicated.module_ids)

    def holder_first() -> bool:
        assert replicated.router.replicas is not None
        return replicated.router.replicas.order(replicated.module_ids).replica_ids[0] == holder

    await until(holder_first, "the router sees the chain on the holder", replicated.replicas, 10)
    other = cold.replica_ids[0]
    before = {r: await hits(replicated, r) for r in (holder, other)}
    async with AsyncRouterClient(replicated.router_address, token=replicated.user_token()) as router:
        responses = [r async for r in router.generate(ask(4))]
    assert responses[-1].HasField("done")
    after = {r: await hits(replicated, r) for r in (holder, other)}
    engine = common_pb2.TIER_ENGINE
    assert after[holder][engine] - before[holder][engine] == len(replicated.module_ids)  # the chain, in its engine
    assert after[other] == before[other]


async def test_a_replica_killed_mid_stream_gives_a_clear_status_and_the_next_request_a_healthy_replica(
    replicated: Replicated,
) -> None:
    assert replicated.router.replicas is not None
    serving = replicated.router.replicas.order(replicated.module_ids).replica_ids[0]
    async with AsyncRouterClient(replicated.router_address, token=replicated.user_token()) as router:
        call = router.generate(ask(1024))
        stream = aiter(call)
        while not (await anext(stream)).HasField("token"):
            pass  # the decision comes first
        os.kill(replicated.replicas[serving].process.pid, signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for response in stream:
                assert not response.HasField("done"), "the answer ended before the replica was killed"
        assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
        assert serving in (failure.value.details() or "")
        assert "went away" in (failure.value.details() or "")
        details = error_details(failure.value)
        assert details is not None and details.reason == "REPLICA_LOST"
        assert retry_delay_s(failure.value) is not None  # retryable

        responses = [r async for r in router.generate(ask(4))]
    assert responses[-1].HasField("done")
    healthy = set(replicated.replicas) - {serving}
    assert replicated.router.replicas.order(replicated.module_ids).replica_ids == tuple(healthy)


async def test_a_replica_dead_before_the_first_token_is_skipped_for_the_next_best(replicated: Replicated) -> None:
    assert replicated.router.replicas is not None
    dead, healthy = replicated.router.replicas.order(replicated.module_ids).replica_ids
    process = replicated.replicas[dead].process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)  # its announcement lives on until it expires: the router still ranks it first
    before = sum((await hits(replicated, healthy)).values())
    async with AsyncRouterClient(replicated.router_address, token=replicated.user_token()) as router:
        responses = [r async for r in router.generate(ask(4))]
    assert responses[-1].HasField("done")
    assert sum((await hits(replicated, healthy)).values()) > before  # the other replica served it
    failed = {v.replica_id for v in replicated.router.replicas.directory.views() if v.failed}
    assert failed == {dead}
