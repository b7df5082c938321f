"""Embedded infrastructure for development and tests: a NATS JetStream server and Postgres with pgvector.

Both run as local processes on loopback ports under one run directory; `InfraStack` brings them up
together and records where they are in `state.json` so another process can find them
(`local_service_urls`). Both require credentials, generated into the run directory (0600 files):
Postgres a superuser password (scram-sha-256), NATS one user per platform identity with its own
subject permissions (`cag.infra.nats_auth`).
"""

from cag.infra.database import DatabaseUrls, create_database, drop_database, ensure_database
from cag.infra.errors import InfraError
from cag.infra.nats import NatsConfig, NatsServer
from cag.infra.nats_auth import ADMIN, IDENTITIES, OPS, SERVICES
from cag.infra.postgres import PostgresConfig, PostgresServer
from cag.infra.secret_files import ensure_auth_key
from cag.infra.stack import InfraStack, InfraState, ServerStatus, ServiceUrls, local_service_urls

__all__ = [
    "ADMIN",
    "IDENTITIES",
    "OPS",
    "SERVICES",
    "DatabaseUrls",
    "InfraError",
    "InfraStack",
    "InfraState",
    "NatsConfig",
    "NatsServer",
    "PostgresConfig",
    "PostgresServer",
    "ServerStatus",
    "ServiceUrls",
    "create_database",
    "drop_database",
    "ensure_auth_key",
    "ensure_database",
    "local_service_urls",
]
