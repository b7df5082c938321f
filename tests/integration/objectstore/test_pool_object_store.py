"""The cache pool fetching modules by s3:// storage URIs from a real S3 endpoint (moto's server): served exactly
and kept in its own tiers; during an object-store outage it serves what it holds and answers UNAVAILABLE only for
modules it does not; a corrupted object is quarantined and never served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from cag.cachepool.app import CachePoolApp
from cag.engine import Engine
from cag.kvmodule import ModuleFile
from cag.models import ModelFiles
from cag.v1 import common_pb2
from tests.e2e.test_serving_path import QUESTION, in_process_answer
from tests.infra_fixtures import Infra
from tests.integration.cachepool.conftest import Pool, pool_settings
from tests.integration.cachepool.test_cachepool_edges import ask, drain, until_caught_up
from tests.integration.cachepool.test_cachepool_serving import outcome_of
from tests.integration.objectstore.conftest import S3Endpoint
from tests.registry_server import RegistryServer


@pytest.fixture
async def s3_pool(
    registry: RegistryServer, infra: Infra, s3: S3Endpoint, tiny_engine: Engine, tmp_path: Path, models_dir: Path
) -> AsyncIterator[Pool]:
    from cag.auth.tokens import load_key

    endpoint = s3.settings
    settings = pool_settings(
        registry, infra, tmp_path / "disk", CAG_CACHEPOOL_HOME=models_dir.parent, default_max_new_tokens=12,
        s3={
            "s3_endpoint_url": str(endpoint.endpoint_url), "s3_region": str(endpoint.region),
            "s3_access_key_id": str(endpoint.access_key_id), "s3_secret_access_key": str(endpoint.secret_access_key),
        },
    )  # fmt: skip
    tiny_engine.evict()
    app = CachePoolApp(settings, engine=tiny_engine)  # type: ignore[arg-type]
    await app.start()
    try:
        yield Pool(app=app, registry=registry, address=settings.address, key=load_key(infra.auth_key_file))
    finally:
        await app.stop()


async def publish_in_s3(pool: Pool, s3: S3Endpoint, path: Path, data: bytes | None = None) -> str:
    """Uploads the module (or `data` in its place) and publishes its record with the s3:// URI."""
    module = ModuleFile.open(path)
    location = s3.location(f"modules/{path.name}")
    upload = path
    if data is not None:
        upload = path.with_name(f"damaged-{path.name}")
        upload.write_bytes(data)
    s3.store().upload(upload, location)
    admin = pool.registry.admin()
    await admin.register(module.metadata, storage_uri=location.uri, header_sha256=module.header_sha256)
    await admin.publish(module.metadata.module_id)
    return module.metadata.module_id


async def test_modules_from_the_object_store_are_served_exactly_and_kept_in_the_pools_tiers(
    s3_pool: Pool, s3: S3Endpoint, servable_chain: tuple[Path, Path], tiny_engine: Engine, tiny_model: ModelFiles
) -> None:
    ids = [await publish_in_s3(s3_pool, s3, path) for path in servable_chain]
    await until_caught_up(s3_pool)
    async with s3_pool.client() as router:
        answer = await drain(router.generate(ask(ids, query=QUESTION)))
    tokens = [t for e in answer if e.HasField("token") for t in e.token.token_ids]
    tiny_engine.evict()
    assert tokens == in_process_answer(tiny_engine, SimpleNamespace(chain=servable_chain), tiny_model, QUESTION)
    for module_id in ids:  # downloaded, verified and kept: the next request needs no object-store read
        assert s3_pool.core.disk.path_of(module_id).exists()


async def test_an_object_store_outage_fails_only_modules_the_pool_does_not_hold(
    s3_pool: Pool, s3: S3Endpoint, servable_chain: tuple[Path, Path]
) -> None:
    root, child = [await publish_in_s3(s3_pool, s3, path) for path in servable_chain]
    await until_caught_up(s3_pool)
    async with s3_pool.client() as router:
        await router.prefetch([root], common_pb2.TIER_HOST_RAM)
        s3.stop()
        held = await outcome_of(drain(router.generate(ask([root]))))
        missing = await outcome_of(drain(router.generate(ask([root, child]))))
    assert not isinstance(held, grpc.aio.AioRpcError), held
    assert isinstance(missing, grpc.aio.AioRpcError)
    assert missing.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_corrupted_object_is_quarantined_and_never_served(
    s3_pool: Pool, s3: S3Endpoint, servable_chain: tuple[Path, Path]
) -> None:
    data = bytearray(servable_chain[0].read_bytes())
    data[-200] ^= 0x01
    module_id = await publish_in_s3(s3_pool, s3, servable_chain[0], bytes(data))
    await until_caught_up(s3_pool)
    async with s3_pool.client() as router:
        outcome = await outcome_of(drain(router.generate(ask([module_id]))))
    assert isinstance(outcome, grpc.aio.AioRpcError)
    assert outcome.code() in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.FAILED_PRECONDITION)
    record = await s3_pool.registry.admin().get(module_id)
    assert record.state == common_pb2.MODULE_STATE_QUARANTINED
