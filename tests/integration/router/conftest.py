"""The router served in-process over real gRPC, in front of a real registry app (Postgres, its outbox relaying
events to real NATS) and a scripted cache pool.

The cache pool here is a stand-in servicer (`ScriptedCachePool`): these tests are about the router's decisions,
snapshot and edge, and the real pool's answers are covered end to end in tests/e2e. It runs behind the same
server builder as every service (authentication, the error interceptor), so the router meets real statuses.

Knowledge published for the tests (model, layout and sources are stand-ins; the registry keeps metadata only):

    public/shared (PUBLIC) ─┬─ acme/billing (TENANT)
                            └─ globex/billing (TENANT)
    acme/payroll (WORKSPACE finance) · acme/diary (USER alice)
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cag.acl import PUBLIC_TENANT, AclScope
from cag.auth import Caller
from cag.auth.tokens import issue_user_token, load_key
from cag.errors import CagError
from cag.infra.ports import free_port
from cag.metadata import ModuleMetadata
from cag.registry.app import RegistryApp
from cag.registry.db.store import PostgresStore
from cag.registry.settings import RegistrySettings
from cag.router.app import RouterApp
from cag.router.settings import RouterSettings
from cag.rpc.auth import current_caller
from cag.rpc.clients import AsyncRouterClient
from cag.rpc.server import ServiceServer, build_server
from cag.rpc.tls import ClientTls, ServerTls, client_tls, server_tls
from cag.settings import InfraSettings
from cag.telemetry import configure_tracing
from cag.v1 import cachepool_pb2, cachepool_pb2_grpc, common_pb2, registry_pb2, router_pb2
from tests.infra_fixtures import FreshDatabase, Infra
from tests.registry_population import make_metadata
from tests.registry_server import Client, RegistryServer
from tests.support.pki import SERVER_NAME, Pki

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

BILLING_SOURCE = "git://kb/acme/billing"
SHARED = make_metadata("shared-root", tenant_id=PUBLIC_TENANT, route="shared", acl_scope=AclScope.PUBLIC)


def child(
    module_id: str, tenant: str, route: str, scope: AclScope = AclScope.TENANT, principal: str = ""
) -> ModuleMetadata:
    return make_metadata(
        module_id,
        tenant_id=tenant,
        route=route,
        acl_scope=scope,
        acl_principal=principal,
        parent_id=SHARED.module_id,
        parent_chain_hash=SHARED.chain_hash,
    )


MODULES = (
    (SHARED, "git://kb/shared"),
    (child("acme-billing", "acme", "billing"), BILLING_SOURCE),
    (child("globex-billing", "globex", "billing"), "git://kb/globex/billing"),
    (child("acme-payroll", "acme", "payroll", AclScope.WORKSPACE, "finance"), "git://kb/acme/payroll"),
    (child("acme-diary", "acme", "diary", AclScope.USER, "alice"), "git://kb/acme/diary"),
)

ACME_RULES = registry_pb2.PutRouteRulesRequest(
    tenant_id="acme",
    routes=[
        registry_pb2.RouteInfo(route="billing", description="invoices, refunds and payments", priority=7),
        registry_pb2.RouteInfo(route="payroll", description="salaries"),
        registry_pb2.RouteInfo(route="diary", description="my own notes"),
        registry_pb2.RouteInfo(route="roadmap", description="what we build next"),  # no module published
    ],
    rules=[
        registry_pb2.RouteRule(rule_id="refund-intent", route="billing", metadata={"intent": "refund"}),
        registry_pb2.RouteRule(rule_id="salary-words", route="payroll", keywords=["salary", "pay slip"]),
        registry_pb2.RouteRule(rule_id="invoice-words", route="billing", keywords=["invoice"]),
        registry_pb2.RouteRule(rule_id="roadmap-words", route="roadmap", keywords=["roadmap"]),
    ],
)


@dataclass
class ScriptedCachePool(cachepool_pb2_grpc.CachePoolServiceServicer):
    """Answers Generate with `tokens` then a summary, or fails with `error`; records each request and its caller."""

    tokens: tuple[str, ...] = ("Refunds ", "take ", "5 days.")
    error: CagError | None = None
    requests: list[tuple[Caller, cachepool_pb2.CachePoolGenerateRequest]] = field(default_factory=list)

    async def Generate(  # noqa: N802  (the generated servicer's name)
        self, request: cachepool_pb2.CachePoolGenerateRequest, context: Context
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        self.requests.append((current_caller(), request))
        if self.error is not None:
            raise self.error
        for index, text in enumerate(self.tokens):
            yield common_pb2.GenerateResponse(token=common_pb2.TokenChunk(text=text, token_ids=[index], index=index))
        served = [
            common_pb2.ServedModule(module_id=m, version=1, tier=common_pb2.TIER_ENGINE) for m in request.module_ids
        ]
        summary = common_pb2.GenerateSummary(tokens=len(self.tokens), module_ids=request.module_ids, modules=served)
        yield common_pb2.GenerateResponse(done=summary)


@dataclass
class Stack:
    registry_app: RegistryApp
    registry: RegistryServer  # the registry app's server, with clients that mint tokens from the shared key
    pool: ScriptedCachePool
    router: RouterApp
    router_address: str
    key: bytes
    spans: InMemorySpanExporter
    router_tls: ClientTls | None = None  # what a product service dials the router with

    @property
    def admin(self) -> Client:
        return self.registry.admin()

    @property
    def store(self) -> PostgresStore:
        assert self.registry_app.core is not None
        store = self.registry_app.core.store
        assert isinstance(store, PostgresStore)
        return store

    def token(self, tenant: str = "acme", *, workspace: str | None = None, user: str | None = None) -> str:
        return issue_user_token(self.key, tenant, 600, workspace=workspace, user=user)

    def expired_token(self) -> str:
        return issue_user_token(self.key, "acme", 60, user="alice", now=time.time() - 3600)

    def client(self, token: str | None = None) -> AsyncRouterClient:
        return AsyncRouterClient(self.router_address, token=token or self.token(user="alice"), tls=self.router_tls)

    async def explain(self, query: str, *, token: str | None = None, **fields: Any) -> common_pb2.RouteDecision:
        async with self.client(token) as router:
            return await router.explain(router_pb2.GenerateRequest(query=query, **fields))

    async def generate(
        self, query: str, *, token: str | None = None, **fields: Any
    ) -> tuple[list[common_pb2.GenerateResponse], grpc.aio.AioRpcError | None]:
        """Every message of the stream, and the error that ended it (None when it ended normally)."""
        received: list[common_pb2.GenerateResponse] = []
        async with self.client(token) as router:
            try:
                async for response in router.generate(router_pb2.GenerateRequest(query=query, **fields)):
                    received.append(response)
            except grpc.aio.AioRpcError as e:
                return received, e
        return received, None


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0) -> None:
    """Waits for something that is to happen (a change reaching the router through the feed or an event)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.05)


async def serve_pool(pool: ScriptedCachePool, address: str, key: bytes, tls: ServerTls | None = None) -> ServiceServer:
    name = cachepool_pb2.DESCRIPTOR.services_by_name["CachePoolService"].full_name
    server = await build_server(
        [(cachepool_pb2_grpc.add_CachePoolServiceServicer_to_server, pool)], [name], address, auth=key, tls=tls
    )
    await server.start()
    return server


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every span this test process records (the first configure_tracing of the process wins)."""
    exporter = InMemorySpanExporter()
    configure_tracing("cag-tests", exporter=exporter)
    return exporter


@pytest.fixture
def router_overrides() -> dict[str, Any]:
    """RouterSettings fields a test module sets differently (by overriding this fixture)."""
    return {}


@pytest.fixture
def platform_pki() -> Pki | None:
    """Certificates of the stack's servers and clients (a test module overrides this fixture): None, plaintext."""
    return None


def tls_infra(pki: Pki | None) -> dict[str, Any]:
    """The TLS settings a pod gets from the chart: its certificate (server and client use), the CA, the name."""
    if pki is None:
        return {}
    return {
        "tls_cert_file": pki.server_cert_file,
        "tls_key_file": pki.server_key_file,
        "tls_ca_file": pki.ca_file,
        "tls_server_name": SERVER_NAME,
    }


@pytest.fixture
async def stack(
    infra: Infra,
    fresh_database: FreshDatabase,
    spans: InMemorySpanExporter,
    router_overrides: dict[str, Any],
    platform_pki: Pki | None,
) -> AsyncIterator[Stack]:
    key = load_key(infra.auth_key_file)
    with_tls = tls_infra(platform_pki)
    shared = InfraSettings(
        database_url=fresh_database.database_url, nats_url=infra.nats_url, auth_key_file=infra.auth_key_file, **with_tls
    )
    registry_address = f"127.0.0.1:{free_port()}"
    registry_settings = RegistrySettings(infra=shared, address=registry_address, shutdown_grace_s=0)
    registry_app = RegistryApp(registry_settings)
    await registry_app.start()
    assert registry_app.server is not None
    dial = client_tls(registry_settings)  # the test's own calls: as a service of the platform would
    channel = (
        grpc.aio.insecure_channel(registry_address)
        if dial is None
        else grpc.aio.secure_channel(registry_address, dial.credentials(), options=dial.options())
    )
    registry = RegistryServer(address=registry_address, key=key, channel=channel, server=registry_app.server)
    # The generated base answers UNIMPLEMENTED for the RPCs the router never calls (its stubs declare them abstract).
    pool, pool_address = ScriptedCachePool(), f"127.0.0.1:{free_port()}"  # type: ignore[abstract]
    pool_server = await serve_pool(pool, pool_address, key, server_tls(registry_settings))
    router_app: RouterApp | None = None
    try:
        for metadata, source in MODULES:
            await registry.admin().register(metadata, source_uri=source)
            await registry.admin().publish(metadata.module_id)
        await registry.admin().stub.PutRouteRules(ACME_RULES)
        router_address = f"127.0.0.1:{free_port()}"
        router_app = RouterApp(
            RouterSettings(
                address=router_address,
                registry_address=registry_address,
                cachepool_address=pool_address,
                # Nothing listens on port 1: the fallback service is down. (Not a free port: gRPC remembers a
                # refused address process-wide, and a free port may be handed to the next test's registry.)
                fallback_address="127.0.0.1:1",
                registry_timeout_s=2.0,
                instance=f"t{secrets.token_hex(4)}",  # a durable of its own: rule updates of this test only
                shutdown_grace_s=0,
                # Callers of the router present no client certificate (its tls_client_auth off), like the chart's.
                infra={  # type: ignore[arg-type]
                    "nats_url": infra.nats_url,
                    "auth_key_file": infra.auth_key_file,
                    **with_tls,
                    "tls_client_auth": False,
                },
                **router_overrides,
            )
        )
        await router_app.start()
        router_tls = (
            None if platform_pki is None else ClientTls.from_files(platform_pki.ca_file, server_name=SERVER_NAME)
        )
        yield Stack(registry_app, registry, pool, router_app, router_address, key, spans, router_tls)
    finally:
        if router_app is not None:
            await router_app.stop()
        await pool_server.stop(grace=None)
        await channel.close(grace=None)
        await registry_app.stop()
