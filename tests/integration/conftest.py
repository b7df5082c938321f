"""Fixtures shared by the registry's integration tests: an authenticated gRPC server over the Postgres store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cag.registry.core import RegistryCore
from cag.registry.db.store import PostgresStore
from tests.registry_server import RegistryServer, serve_registry


@pytest.fixture
async def server(store: PostgresStore) -> AsyncIterator[RegistryServer]:
    """A registry gRPC server over `store`, with authentication on."""
    async with serve_registry(RegistryCore(store)) as running:
        yield running
