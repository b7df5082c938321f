"""The registry under fuzzing (issue 6): every RPC gets requests built from its proto descriptors.

A real server (build_server + RegistryServicer + RegistryCore(PostgresStore)) on a fresh database,
seeded with a few modules (published chains, a public module, a workspace module, an unpublished one)
so that mutated seed requests reach real rows. For every call: never INTERNAL / UNKNOWN / a hang,
status details bounded, an ErrorInfo naming the field on INVALID_ARGUMENT, nothing written to any
table when the call fails, and the health service still SERVING afterwards.

Bounded by default (`tests/support/grpc_fuzz.DEFAULT_EXAMPLES` per RPC); `CAG_FUZZ_EXAMPLES=2000` runs
longer.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from cag.acl import AclScope
from cag.auth import ALL_TENANTS, Scope
from cag.metadata import ModuleMetadata
from cag.registry.convert import module_of
from cag.registry.core import RegistryCore
from cag.registry.core.audit import encode_audit_token
from cag.registry.core.records import ModuleRecord
from cag.registry.core.states import ModuleState
from cag.registry.core.store import encode_page_token
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.schema import Base
from cag.registry.db.store import PostgresStore
from cag.registry.servicer import SERVICE_NAME
from cag.v1 import common_pb2, registry_pb2
from tests.infra_fixtures import FreshDatabase
from tests.registry_population import make_metadata
from tests.registry_server import RegistryServer, serve_registry
from tests.support.grpc_fuzz import (
    FuzzSession,
    GrpcFuzzer,
    authorization_values,
    fuzz_cases,
    fuzz_settings,
    json_values,
    table_snapshot,
)

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
METHODS = (
    "Register", "Publish", "Get", "List", "ResolveRoute", "Invalidate", "Rollback", "Watch", "ListAudit",
    "Quarantine", "PutRouteRules", "GetRouteRules",
)  # fmt: skip

LAYOUT = json.dumps({"layout_id": "support.v1", "slots": ["system", "tools", "domain", "query"]})


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_layout_hash(layout: str) -> str:
    return sha256(json.dumps(json.loads(layout), sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def seed_metadata(module_id: str, **changes: Any) -> ModuleMetadata:
    """A module every registry rule accepts: hex digests, a layout hashed as the registry hashes it."""
    parent = changes.pop("parent", None)
    if parent is not None:
        changes |= {"parent_id": parent, "parent_chain_hash": sha256("chain" + parent)}
    return make_metadata(module_id, layout=LAYOUT, layout_hash=canonical_layout_hash(LAYOUT), **changes)


def seed_record(metadata: ModuleMetadata) -> ModuleRecord:
    return ModuleRecord(
        metadata=metadata,
        source_uri=f"git://kb/{metadata.tenant_id}/{metadata.route}",
        state=ModuleState.VALIDATING,
        header_sha256=sha256("header" + metadata.module_id),
    )


# (metadata, published?) in registration order: parents first. acme/billing has versions 1 and 2.
SEED_MODULES = (
    (seed_metadata("sys-root", route="system"), True),
    (seed_metadata("billing-v1", parent="sys-root"), True),
    (seed_metadata("billing-v2", parent="sys-root"), True),
    (seed_metadata("shared-public", tenant_id="public", route="shared", acl_scope=AclScope.PUBLIC), True),
    (seed_metadata("ws-notes", route="notes", acl_scope=AclScope.WORKSPACE, acl_principal="ws-1"), True),
    (seed_metadata("draft-api", route="api", parent="sys-root"), False),
)
NEW_MODULE = seed_metadata(
    "fresh-tools",
    route="tools",
    parent="sys-root",
    expires_at="2027-01-01T00:00:00Z",
    golden_results=json.dumps(
        [
            {
                "question": "Refunds?",
                "expect": ["30 days", "receipt"],
                "answer": "30 days, with a receipt",
                "passed": True,
            },
            {"question": "Fees?", "expect": ["none"], "answer": "none", "passed": True},
        ]
    ),
)


def _module(metadata: ModuleMetadata) -> common_pb2.Module:
    return module_of(seed_record(metadata))


R = registry_pb2
SEEDS: dict[str, list[Any]] = {
    "Register": [R.RegisterRequest(module=_module(NEW_MODULE)), R.RegisterRequest(module=_module(SEED_MODULES[1][0]))],
    "Publish": [
        R.PublishRequest(module_id="draft-api", expected_version=0),
        R.PublishRequest(module_id="billing-v2", expected_version=3),
    ],
    "Get": [R.GetModuleRequest(module_id=m.module_id) for m, _ in SEED_MODULES],
    "List": [
        R.ListModulesRequest(
            tenant_id="acme",
            route="billing",
            state=common_pb2.MODULE_STATE_PUBLISHED,
            model_name="smollm2",
            layout_id="support.v1",
            page_size=2,
            page_token=encode_page_token("billing-v1"),
        ),
        R.ListModulesRequest(tenant_id="public", page_size=1),
    ],
    "ResolveRoute": [
        R.ResolveRouteRequest(tenant_id="acme", route="billing"),
        R.ResolveRouteRequest(tenant_id="public", route="shared"),
    ],
    "Invalidate": [
        R.InvalidateRequest(
            source=R.SourceTrigger(tenant_id="acme", source_uri="git://kb/acme/billing", new_checksum=sha256("new")),
            reason="fuzz: source changed",
        ),
        R.InvalidateRequest(model=R.ModelTrigger(model_name="smollm2", new_revision="rev-b"), reason="fuzz"),
        R.InvalidateRequest(tokenizer=R.TokenizerTrigger(tokenizer_revision="tok-1"), reason="fuzz"),
        R.InvalidateRequest(
            acl=common_pb2.Acl(scope=common_pb2.ACL_SCOPE_WORKSPACE, tenant_id="acme", principal="ws-1"), reason="fuzz"
        ),
        R.InvalidateRequest(layout=R.LayoutTrigger(layout_id="support.v1", layout_hash=sha256("v2")), reason="fuzz"),
        R.InvalidateRequest(module=R.ModuleTrigger(module_id="draft-api"), reason="fuzz: withdrawn"),
    ],
    "Rollback": [R.RollbackRequest(tenant_id="acme", route="billing", to_version=1, reason="fuzz")],
    "Quarantine": [R.QuarantineRequest(module_id="billing-v1", reason="fuzz: checksum mismatch in host RAM")],
    "PutRouteRules": [
        R.PutRouteRulesRequest(
            tenant_id="acme",
            rules=[R.RouteRule(rule_id="r1", route="billing", metadata={"intent": "billing"}, keywords=["refund"])],
            routes=[R.RouteInfo(route="billing", description="Invoices", priority=2)],
            expected_version=0,
            reason="fuzz",
        )
    ],
    "GetRouteRules": [R.GetRouteRulesRequest(tenant_id="acme", version=0)],
    "Watch": [R.WatchRequest(since_sequence=0, tenant_id="acme"), R.WatchRequest(since_sequence=2)],
    "ListAudit": [
        R.ListAuditRequest(tenant_id="acme", page_size=2, page_token=encode_audit_token(3)),
        R.ListAuditRequest(tenant_id="public", page_size=1),
    ],
}
CASES = fuzz_cases(SERVICE, SEEDS)


async def seed(store: PostgresStore) -> None:
    for metadata, published in SEED_MODULES:
        await store.register(seed_record(metadata))
        if published:
            await store.publish(metadata.module_id)


@dataclass
class Target:
    server: RegistryServer
    engine: AsyncEngine

    def session(self, subject: str, scopes: list[Scope], tenants: list[str]) -> FuzzSession:
        """A fuzz session calling as this identity; every failed call is checked against a table snapshot."""
        token = self.server.token(subject, scopes, tenants)
        return FuzzSession(
            GrpcFuzzer(SERVICE, self.server.channel, metadata=(("authorization", f"Bearer {token}"),)),
            snapshot=table_snapshot(self.engine, Base.metadata),
            health_service=SERVICE_NAME,
        )


@pytest.fixture
async def target(fresh_database: FreshDatabase) -> AsyncIterator[Target]:
    """A seeded registry server, with authentication as tests/registry_server.py builds it."""
    engine = connect(fresh_database.database_url)
    try:
        store = PostgresStore(session_factory(engine))
        await seed(store)
        async with serve_registry(RegistryCore(store)) as server:
            yield Target(server=server, engine=engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def admin(target: Target) -> AsyncIterator[FuzzSession]:
    """Calling as an admin of every tenant, so that requests get past authorization to validation and storage."""
    session = target.session("service:fuzz-admin", [Scope.ADMIN], [ALL_TENANTS])
    await session.assert_serving()
    yield session
    print(f"outcomes per status: {session.statistics()}")  # shown with a failure: how deep the fuzzer got


async def test_the_snapshot_sees_inserts_and_updates(target: Target) -> None:
    """The "nothing written" check is only as good as the snapshot: a registration (inserts in several tables)
    and a publish (updates, an outbox row) must both show."""
    snapshot = table_snapshot(target.engine, Base.metadata)
    before = await snapshot()
    assert before == await snapshot()
    assert set(before) == set(Base.metadata.tables)
    store = PostgresStore(session_factory(target.engine))
    await store.register(seed_record(NEW_MODULE))
    registered = await snapshot()
    assert {n for n in before if before[n] != registered[n]} >= {"modules", "sources"}
    await store.publish(NEW_MODULE.module_id)
    published = await snapshot()
    assert {n for n in before if registered[n] != published[n]} >= {"modules", "routes", "outbox"}
    assert published["modules"].rows == registered["modules"].rows  # an update: only the digest tells


def test_every_rpc_is_fuzzed() -> None:
    assert sorted(METHODS) == sorted(m.name for m in SERVICE.methods)


@pytest.mark.parametrize("method", METHODS)
@fuzz_settings()
@given(data=st.data())
async def test_rpc_survives_malformed_requests(admin: FuzzSession, method: str, data: st.DataObject) -> None:
    await admin.exercise(data.draw(CASES[method], label=method))


ANY_CASE = st.sampled_from(METHODS).flatmap(lambda method: CASES[method])


@fuzz_settings()
@given(data=st.data())
async def test_tenant_caller_survives_malformed_requests(target: Target, data: st.DataObject) -> None:
    """A caller with read and write on acme only: the permission checks see the same hostile input."""
    session = target.session("service:fuzz-acme", [Scope.READ, Scope.WRITE], ["acme"])
    await session.exercise(data.draw(ANY_CASE, label="case"))


def signed_tokens(key: bytes) -> st.SearchStrategy[str]:
    """Tokens signed with the server's own key whose claims are fuzzed: the verifier must refuse every
    malformed one with UNAUTHENTICATED, never fail on a claim of an unexpected type."""
    now = int(time.time())
    claims = {
        "sub": st.one_of(st.just("service:fuzz"), json_values()),
        "scopes": st.one_of(st.sampled_from([["admin"], ["read", "write"], []]), json_values()),
        "tenants": st.one_of(st.sampled_from([[ALL_TENANTS], ["acme"], []]), json_values()),
        "iat": st.one_of(st.just(now), json_values()),
        "exp": st.one_of(st.just(now + 3600), st.just(now - 3600), json_values()),
        "aud": st.one_of(st.just("cag"), json_values()),
        "iss": st.one_of(st.just("cag"), json_values()),
        "nbf": json_values(),
    }
    required = {name: strategy for name, strategy in claims.items() if name != "nbf"}
    whole = st.fixed_dictionaries(required, optional={"nbf": claims["nbf"]})
    missing = st.fixed_dictionaries({}, optional=claims)
    headers = st.one_of(
        st.just({"alg": "HS256", "typ": "JWT"}),
        st.sampled_from([{"alg": "none"}, {"alg": "HS512"}, {"alg": "RS256"}, {}, {"alg": "HS256", "kid": "../x"}]),
    )
    return st.builds(partial(sign_hs256, key=key), st.one_of(whole, missing), headers)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_hs256(claims: Any, header: Any, key: bytes) -> str:
    """A JWT signed with `key` over any JSON claims (PyJWT refuses to encode some of the odd ones)."""
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


@fuzz_settings()
@given(data=st.data())
async def test_credentials_survive_fuzzing(target: Target, data: st.DataObject) -> None:
    """Malformed, forged, expired and oddly-claimed bearer tokens on every RPC: UNAUTHENTICATED (or
    PERMISSION_DENIED), never INTERNAL, nothing written."""
    session = target.session("service:fuzz-admin", [Scope.ADMIN], [ALL_TENANTS])
    case = data.draw(ANY_CASE, label="case")
    header = authorization_values(signed_tokens(target.server.key))
    metadata = data.draw(
        st.one_of(
            st.just(()),
            st.tuples(st.tuples(st.just("authorization"), header)),
            st.tuples(st.tuples(st.just("authorization"), header), st.tuples(st.just("authorization"), header)),
        ),
        label="metadata",
    )
    await session.exercise(dataclasses.replace(case, metadata=metadata))
