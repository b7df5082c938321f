"""The `store` fixture: every conformance test runs against the in-memory fake and the Postgres store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cag.registry.core.memory import MemoryStore
from cag.registry.core.store import RegistryStore
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.store import PostgresStore


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RegistryStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    database = request.getfixturevalue("fresh_database")
    engine = connect(database.database_url)
    try:
        yield PostgresStore(session_factory(engine))
    finally:
        await engine.dispose()
