"""Alembic migrations, run programmatically (the registry applies them at start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(sync_url: str) -> Config:
    """sync_url: a SQLAlchemy URL with a synchronous driver (postgresql+psycopg://...)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return config


def upgrade(sync_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(sync_url), revision)


def downgrade(sync_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(sync_url), revision)


def sync_url_of(async_url: str) -> str:
    """The psycopg (sync) form of an asyncpg URL: migrations run synchronously."""
    return async_url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1)
