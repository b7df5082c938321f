"""Embedded infrastructure for development and tests: a NATS JetStream server and Postgres with pgvector.

Both run as local processes on loopback ports under one run directory; `InfraStack` brings them up
together and records where they are in `state.json` so another process can find them.
"""

from cag.infra.database import DatabaseUrls, create_database, drop_database, ensure_database
from cag.infra.errors import InfraError
from cag.infra.nats import NatsConfig, NatsServer
from cag.infra.postgres import PostgresConfig, PostgresServer
from cag.infra.stack import InfraStack, InfraState, ServerStatus

__all__ = [
    "DatabaseUrls",
    "InfraError",
    "InfraStack",
    "InfraState",
    "NatsConfig",
    "NatsServer",
    "PostgresConfig",
    "PostgresServer",
    "ServerStatus",
    "create_database",
    "drop_database",
    "ensure_database",
]
