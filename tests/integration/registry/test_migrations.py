"""The Alembic migrations against real Postgres: up, down and up again (empty and populated), and the
migrated schema is exactly the models in `cag.registry.db.schema` (what `alembic check` verifies)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, pool, text

from cag.registry.core.triggers import ModelRevised, SourceChanged
from cag.registry.db import migrate
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.schema import Base
from cag.registry.db.store import PostgresStore
from tests.infra_fixtures import FreshDatabase
from tests.registry_population import generate_population

REGISTRY_TABLES = set(Base.metadata.tables)
POPULATED_TABLES = (
    "modules", "layouts", "sources", "model_revisions", "routes", "outbox", "processed_events", "audit_log",
)  # fmt: skip


@pytest.fixture
def sync_engine(fresh_database: FreshDatabase) -> Iterator[Engine]:
    engine = create_engine(fresh_database.sync_database_url, poolclass=pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config("postgresql+psycopg://unused")).get_current_head()
    assert head is not None
    return head


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def versions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in POPULATED_TABLES}


def assert_at_head(engine: Engine) -> None:
    assert tables(engine) == REGISTRY_TABLES | {"alembic_version"}
    assert versions(engine) == [head_revision()]


def assert_at_base(engine: Engine) -> None:
    assert tables(engine) == {"alembic_version"}, "downgrade to base must drop every registry table"
    assert versions(engine) == []


def test_upgrade_downgrade_upgrade_on_an_empty_database(fresh_database: FreshDatabase, sync_engine: Engine) -> None:
    url = fresh_database.sync_database_url
    migrate.upgrade(url)
    assert_at_head(sync_engine)
    migrate.downgrade(url, "base")
    assert_at_base(sync_engine)
    migrate.upgrade(url)
    assert_at_head(sync_engine)


async def test_downgrade_and_upgrade_a_populated_database(fresh_database: FreshDatabase, sync_engine: Engine) -> None:
    url = fresh_database.sync_database_url
    migrate.upgrade(url)
    engine = connect(fresh_database.database_url, run_migrations=False)
    try:
        store = PostgresStore(session_factory(engine))
        population = generate_population()
        for i, record in enumerate(population.records):
            await store.register(record)
            if i % 3 != 2:  # a third stays unpublished
                await store.publish(record.module_id)
        assert await store.invalidate(ModelRevised(model_name="smollm2", model_revision="rev-b"), event_id="evt-1")
        await store.invalidate(SourceChanged(tenant_id="acme", source_uri="git://kb/acme/system", checksum="new"),
                               event_id="evt-2")  # fmt: skip
    finally:
        await engine.dispose()
    counts = row_counts(sync_engine)
    assert all(counts.values()), f"every table the registry writes must have rows before the downgrade: {counts}"
    assert counts["modules"] == len(population.records)

    migrate.downgrade(url, "base")
    assert_at_base(sync_engine)
    migrate.upgrade(url)
    assert_at_head(sync_engine)
    assert not any(row_counts(sync_engine).values())


def test_models_match_the_migrated_schema(fresh_database: FreshDatabase, sync_engine: Engine) -> None:
    migrate.upgrade(fresh_database.sync_database_url)
    with sync_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], f"db/schema.py and the migrations disagree; add a migration: {differences}"
