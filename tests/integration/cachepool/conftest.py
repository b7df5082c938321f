"""A cache pool served in-process over real gRPC: a real registry on Postgres, real NATS, real modules compiled
with the tiny model, one engine for the whole session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key
from cag.cachepool.app import CachePoolApp
from cag.cachepool.pool import CachePool
from cag.cachepool.settings import CachePoolSettings
from cag.engine import Engine
from cag.infra.ports import free_port
from cag.kvmodule import ModuleFile
from cag.models import TINY
from cag.registry.core import RegistryCore
from cag.registry.db.store import PostgresStore
from cag.rpc.clients import AsyncCachePoolClient
from cag.v1 import common_pb2
from tests.infra_fixtures import Infra
from tests.registry_server import RegistryServer, serve_registry

ROUTER = "service:router"


@dataclass
class Pool:
    """The running pool, the registry it follows, and clients of both."""

    app: CachePoolApp
    registry: RegistryServer
    address: str
    key: bytes

    @property
    def core(self) -> CachePool:
        assert self.app.pool is not None
        return self.app.pool

    def client(self, subject: str = ROUTER, scopes: tuple[Scope, ...] = (Scope.READ,)) -> AsyncCachePoolClient:
        return AsyncCachePoolClient(self.address, token=issue_token(self.key, subject, scopes, [ALL_TENANTS], 600))

    async def publish(self, path: Path) -> common_pb2.Module:
        """Registers and publishes a module file (its storage_uri: the file where it lies)."""
        module = ModuleFile.open(path)
        admin = self.registry.admin()
        await admin.register(module.metadata, storage_uri=path.as_uri(), header_sha256=module.header_sha256)
        return await admin.publish(module.metadata.module_id)


@pytest.fixture
async def registry(store: PostgresStore, infra: Infra) -> AsyncIterator[RegistryServer]:
    async with serve_registry(RegistryCore(store), key=load_key(infra.auth_key_file)) as running:
        yield running


def pool_settings(
    registry: RegistryServer, infra: Infra, cache_dir: Path, *, s3: dict[str, str] | None = None, **overrides: object
) -> CachePoolSettings:
    """`s3`: the object store's CAG_S3_* infra settings, when the pool fetches s3:// origins."""
    fields: dict[str, object] = {
        "address": f"127.0.0.1:{free_port()}",
        "registry_address": registry.address,
        "model": TINY,
        "cache_dir": cache_dir,
        "infra": {"nats_url": infra.nats_url, "auth_key_file": infra.auth_key_file, **(s3 or {})},
        "instance": f"t{free_port()}",
        "max_running": 2,
        "max_queued": 2,
        "default_max_new_tokens": 8,
    }
    return CachePoolSettings(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def pool(
    registry: RegistryServer, infra: Infra, tiny_engine: Engine, tmp_path: Path, models_dir: Path
) -> AsyncIterator[Pool]:
    settings = pool_settings(registry, infra, tmp_path / "disk", CAG_CACHEPOOL_HOME=models_dir.parent)
    app = CachePoolApp(settings, engine=tiny_engine)  # type: ignore[arg-type]
    await app.start()
    try:
        yield Pool(app=app, registry=registry, address=settings.address, key=load_key(infra.auth_key_file))
    finally:
        await app.stop()
