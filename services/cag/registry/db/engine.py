"""Connecting the registry to Postgres: migrate, then an async engine and session factory."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from cag.registry.db import migrate


def connect(database_url: str, *, run_migrations: bool = True, pool_size: int = 10) -> AsyncEngine:
    """database_url: the asyncpg form; migrations (synchronous) are applied first when asked."""
    if run_migrations:
        migrate.upgrade(migrate.sync_url_of(database_url))
    return create_async_engine(database_url, pool_size=pool_size, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
