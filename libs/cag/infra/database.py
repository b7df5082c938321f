"""Database URLs in the forms the platform uses, and admin operations on any Postgres server."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

ASYNC_DRIVER = "postgresql+asyncpg"
SYNC_DRIVER = "postgresql+psycopg"
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class DatabaseUrls:
    """One database as SQLAlchemy URLs: `async_url` (asyncpg) and `sync_url` (psycopg 3)."""

    async_url: str
    sync_url: str

    @classmethod
    def parse(cls, url: str) -> DatabaseUrls:
        """From any Postgres URL (`postgresql://`, `postgresql+asyncpg://`, `postgresql+psycopg://`)."""
        parsed = make_url(url)
        return cls(async_url=_render(parsed, ASYNC_DRIVER), sync_url=_render(parsed, SYNC_DRIVER))

    @classmethod
    def local(cls, *, host: str, port: int, user: str, database: str, password: str | None = None) -> DatabaseUrls:
        url = URL.create("postgresql", username=user, password=password, host=host, port=port, database=database)
        return cls.parse(url.render_as_string(hide_password=False))

    @property
    def database(self) -> str:
        return make_url(self.sync_url).database or ""

    @property
    def libpq_url(self) -> str:
        """The plain `postgresql://` form that psycopg/asyncpg/psql accept directly."""
        return _render(make_url(self.sync_url), "postgresql")

    @property
    def redacted(self) -> str:
        """`async_url` with the password masked, for output and logs."""
        return make_url(self.async_url).render_as_string(hide_password=True)

    def with_database(self, name: str) -> DatabaseUrls:
        """The same server and credentials, another database."""
        return DatabaseUrls.parse(make_url(self.sync_url).set(database=name).render_as_string(hide_password=False))


def _render(url: URL, driver: str) -> str:
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _connect(urls: DatabaseUrls, timeout_s: float = CONNECT_TIMEOUT_S) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(urls.libpq_url, autocommit=True, connect_timeout=max(1, round(timeout_s)))


def connect_error(urls: DatabaseUrls, timeout_s: float = 2.0) -> str | None:
    """Why `select 1` on this database fails, or None when the server answers."""
    try:
        with _connect(urls, timeout_s) as conn:
            conn.execute("select 1")
    except psycopg.Error as e:
        return str(e).strip() or type(e).__name__
    return None


def is_accepting(urls: DatabaseUrls, timeout_s: float = 2.0) -> bool:
    """Whether the server answers `select 1` on this database."""
    return connect_error(urls, timeout_s) is None


def is_authentication_failure(error: str) -> bool:
    """Whether a connection error is the server refusing the credentials (libpq reports no SQLSTATE here)."""
    return "password authentication failed" in error or "no password supplied" in error


def create_database(admin: DatabaseUrls, name: str, *, extensions: tuple[str, ...] = ("vector",)) -> DatabaseUrls:
    """Create database `name` (must not exist) on `admin`'s server with `extensions`; return its URLs."""
    with _connect(admin.with_database("postgres")) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = admin.with_database(name)
    _create_extensions(target, extensions)
    return target


def ensure_database(admin: DatabaseUrls, name: str, *, extensions: tuple[str, ...] = ("vector",)) -> DatabaseUrls:
    """Like `create_database`, but an existing database is kept (its extensions are still ensured)."""
    with _connect(admin.with_database("postgres")) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = admin.with_database(name)
    _create_extensions(target, extensions)
    return target


def drop_database(admin: DatabaseUrls, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions first."""
    with _connect(admin.with_database("postgres")) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _create_extensions(target: DatabaseUrls, extensions: tuple[str, ...]) -> None:
    if not extensions:
        return
    with _connect(target) as conn:
        for extension in extensions:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
