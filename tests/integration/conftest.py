"""Fixtures shared by the registry's integration tests: a Postgres store and an authenticated gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cag.registry.core import RegistryCore
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.store import PostgresStore
from tests.infra_fixtures import FreshDatabase
from tests.registry_server import RegistryServer, serve_registry


@pytest.fixture
async def store(fresh_database: FreshDatabase) -> AsyncIterator[PostgresStore]:
    """The registry store on a fresh, migrated database."""
    engine = connect(fresh_database.database_url)
    try:
        yield PostgresStore(session_factory(engine))
    finally:
        await engine.dispose()


@pytest.fixture
async def server(store: PostgresStore) -> AsyncIterator[RegistryServer]:
    """A registry gRPC server over `store`, with authentication on."""
    async with serve_registry(RegistryCore(store)) as running:
        yield running
