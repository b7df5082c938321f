"""gRPC clients of the platform's services, in one place: per service a blocking one (the command line,
scripts) and an asyncio one (services calling services). Each presents its bearer token on every call."""

from cag.rpc.clients.cachepool import AsyncCachePoolClient, CachePoolClient
from cag.rpc.clients.registry import DEFAULT_TIMEOUT_S, AsyncRegistryClient, RegistryClient
from cag.rpc.clients.router import AsyncRouterClient, RouterClient

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "AsyncCachePoolClient",
    "AsyncRegistryClient",
    "AsyncRouterClient",
    "CachePoolClient",
    "RegistryClient",
    "RouterClient",
]
