"""The serving path in one process: a registry (Postgres), a cache pool (the session's tiny torch or vLLM engine),
a router and the fallback (MiniLM, its index in the same Postgres), each a real gRPC server, real NATS; tracing
into an in-memory exporter. Tenant acme's billing route is served by a public shared module and acme's billing
module on top of it; the fallback indexes both modules' sources when it starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cag.auth.tokens import issue_user_token, load_key
from cag.cachepool.app import CachePoolApp
from cag.embedding import MiniLMEmbedder
from cag.engine import Engine
from cag.fallback.app import FallbackApp
from cag.fallback.settings import FallbackSettings
from cag.infra.ports import free_port
from cag.kvmodule import ModuleFile
from cag.registry.core import RegistryCore
from cag.registry.db.store import PostgresStore
from cag.router.app import RouterApp
from cag.router.settings import RouterSettings
from cag.telemetry import configure_tracing
from cag.v1 import common_pb2, registry_pb2
from tests.conftest import KNOWLEDGE
from tests.infra_fixtures import FreshDatabase, Infra
from tests.integration.cachepool.conftest import pool_settings
from tests.integration.fallback.conftest import minilm  # noqa: F401  (the fixture: MiniLM once per session)
from tests.registry_server import RegistryServer, serve_registry

TENANT = "acme"
ROUTE = "billing"


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every span this test process records (the first configure_tracing of the process wins)."""
    exporter = InMemorySpanExporter()
    configure_tracing("cag-tests", exporter=exporter)
    return exporter


@dataclass
class Platform:
    registry: RegistryServer
    pool: CachePoolApp
    router: RouterApp
    fallback: FallbackApp
    router_address: str
    key: bytes
    chain: tuple[Path, Path]

    def user_token(self, tenant: str = TENANT, user: str = "alice") -> str:
        return issue_user_token(self.key, tenant, 600, user=user)

    def module_ids(self) -> list[str]:
        return [ModuleFile.open(p).metadata.module_id for p in self.chain]


async def publish(registry: RegistryServer, path: Path, source: Path | None = None) -> common_pb2.Module:
    """Register and publish the module file at `path`; `source`: the folder it was compiled from (the fallback
    indexes it), else a placeholder URI nothing reads."""
    module = ModuleFile.open(path)
    admin = registry.admin()
    uri = {"source_uri": source.as_uri()} if source is not None else {}
    await admin.register(module.metadata, storage_uri=path.as_uri(), header_sha256=module.header_sha256, **uri)
    return await admin.publish(module.metadata.module_id)


@pytest.fixture(params=["torch", "vllm"])
def serving_engine(request: pytest.FixtureRequest) -> Engine:
    """The cache pool's engine: every serving-path test runs on the torch engine and on vLLM (emptied first)."""
    engine: Engine = request.getfixturevalue(f"tiny_{'engine' if request.param == 'torch' else 'vllm'}")
    engine.evict()
    return engine


@pytest.fixture
async def platform(
    store: PostgresStore,
    infra: Infra,
    serving_engine: Engine,
    servable_chain: tuple[Path, Path],
    spans: InMemorySpanExporter,
    tmp_path: Path,
    models_dir: Path,
    fresh_database: FreshDatabase,
    minilm: MiniLMEmbedder,  # noqa: F811  (the fixture)
) -> AsyncIterator[Platform]:
    key = load_key(infra.auth_key_file)
    async with serve_registry(RegistryCore(store), key=key) as registry:
        for path, source in zip(servable_chain, ("shared", "billing"), strict=True):
            await publish(registry, path, KNOWLEDGE / source)
        rules = registry_pb2.PutRouteRulesRequest(
            tenant_id=TENANT,
            routes=[registry_pb2.RouteInfo(route=ROUTE, description="invoices and refunds")],
            rules=[registry_pb2.RouteRule(rule_id="refunds", route=ROUTE, keywords=["refund", "refunds"])],
        )
        await registry.admin().stub.PutRouteRules(rules)
        settings = pool_settings(registry, infra, tmp_path / "disk", CAG_CACHEPOOL_HOME=models_dir.parent)
        pool = CachePoolApp(settings, engine=serving_engine)  # type: ignore[arg-type]
        await pool.start()
        fallback = FallbackApp(
            FallbackSettings(
                address=f"127.0.0.1:{free_port()}",
                registry_address=registry.address,
                cachepool_address=settings.address,
                shutdown_grace_s=0,
                group=f"t{free_port()}",  # durables of its own: events of this test only
                metrics_port=free_port(),
                infra={  # type: ignore[arg-type]
                    "database_url": fresh_database.database_url,
                    "nats_url": infra.nats_url_for("fallback"),
                    "auth_key_file": infra.auth_key_file,
                },
            ),
            embedder=minilm,
        )
        await fallback.start()
        router_address = f"127.0.0.1:{free_port()}"
        router = RouterApp(
            RouterSettings(
                address=router_address,
                registry_address=registry.address,
                cachepool_address=settings.address,
                fallback_address=fallback.settings.address,
                instance=f"t{free_port()}",
                infra={"nats_url": infra.nats_url, "auth_key_file": infra.auth_key_file},  # type: ignore[arg-type]
            )
        )
        await router.start()
        try:
            yield Platform(registry, pool, router, fallback, router_address, key, servable_chain)
        finally:
            await router.stop()
            await fallback.stop()
            await pool.stop()
