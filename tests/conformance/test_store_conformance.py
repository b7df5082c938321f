"""The registry store contract, run against the in-memory fake and the Postgres store alike."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest

from cag.acl import AclScope
from cag.errors import InvalidInputError
from cag.registry.core.audit import EVERY_TENANT, Attribution, AuditAction, AuditEntry, AuditQuery, encode_audit_token
from cag.registry.core.records import ModuleRecord, RouteDecision
from cag.registry.core.route_rules import RouteInfo, RouteRule, RuleSet, RuleSetVersionConflictError
from cag.registry.core.states import IllegalTransitionError, ModuleState
from cag.registry.core.store import (
    AlreadyRegisteredError,
    ConcurrentPublishError,
    ListQuery,
    RegistryNotFoundError,
    RegistryStore,
)
from cag.registry.core.triggers import (
    AclChanged,
    LayoutChanged,
    ModelRevised,
    ModuleWithdrawn,
    SourceChanged,
    TokenizerRetired,
    Trigger,
    TtlElapsed,
    affected_modules,
)
from tests.registry_population import Population, generate_population, layout_hash_of, make_metadata

TRIGGERS: list[Trigger] = [
    SourceChanged(tenant_id="acme", source_uri="git://kb/acme/system", checksum="new"),
    SourceChanged(tenant_id="globex", source_uri="git://kb/globex/billing", checksum="new"),
    ModelRevised(model_name="smollm2", model_revision="rev-b"),
    ModelRevised(model_name="tinyllama", model_revision="rev-y"),
    TokenizerRetired(tokenizer_revision="tok-2"),
    AclChanged(tenant_id="acme", scope=AclScope.TENANT),
    AclChanged(tenant_id="initech", scope=AclScope.WORKSPACE, principal="ws-1"),
    LayoutChanged(layout_id="support.v1", layout_hash=layout_hash_of("support.v1", "lh-2")),
    ModuleWithdrawn(module_id="system-0000"),
    TtlElapsed(now=datetime(2026, 6, 1, tzinfo=UTC)),
]


async def load(store: RegistryStore, population: Population, *, publish_every: int = 1) -> None:
    for i, record in enumerate(population.records):
        await store.register(record)
        if i % publish_every == 0:
            await store.publish(record.module_id)


async def states(store: RegistryStore) -> dict[str, ModuleState]:
    out: dict[str, ModuleState] = {}
    token = ""
    while True:
        page, token = await store.list_modules(ListQuery(page_size=50, page_token=token))
        out.update({r.module_id: r.state for r in page})
        if not token:
            return out


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: f"{t.kind}")
async def test_each_trigger_changes_exactly_the_expected_modules(store: RegistryStore, trigger: Trigger) -> None:
    population = generate_population()
    await load(store, population, publish_every=2)
    before = await states(store)
    registered = [dataclasses.replace(r, state=before[r.module_id]) for r in population.records]
    expected = affected_modules(registered, trigger)
    assert expected, "the population must exercise every trigger"
    changed = await store.invalidate(trigger, event_id=f"evt-{trigger.kind}")
    assert {r.module_id: r.state for r in changed} == expected
    after = await states(store)
    assert {m for m in after if after[m] != before[m]} == set(expected)


async def test_redelivered_event_changes_nothing(store: RegistryStore) -> None:
    await load(store, generate_population())
    trigger = ModelRevised(model_name="smollm2", model_revision="rev-b")
    first = await store.invalidate(trigger, event_id="evt-1")
    snapshot = await states(store)
    feed = await store.changes_since(0, limit=10_000)
    assert first
    assert await store.invalidate(trigger, event_id="evt-1") == []
    assert await states(store) == snapshot
    assert await store.changes_since(0, limit=10_000) == feed


async def test_publish_assigns_increasing_versions_and_resolves_the_chain(store: RegistryStore) -> None:
    root = ModuleRecord(
        metadata=make_metadata("system-a", route="system"), source_uri="s", state=ModuleState.VALIDATING
    )
    v1 = ModuleRecord(
        metadata=make_metadata("billing-a", parent_id="system-a"), source_uri="b", state=ModuleState.VALIDATING
    )
    v2 = ModuleRecord(
        metadata=make_metadata("billing-b", parent_id="system-a"), source_uri="b", state=ModuleState.VALIDATING
    )
    for r in (root, v1, v2):
        await store.register(r)
        await store.publish(r.module_id)
    resolved = await store.resolve_route("acme", "billing")
    assert resolved.version == 2
    assert [r.module_id for r in resolved.chain] == ["system-a", "billing-b"]
    await store.rollback("acme", "billing", 1)
    assert [r.module_id for r in (await store.resolve_route("acme", "billing")).chain] == ["system-a", "billing-a"]


async def test_concurrent_publishes_of_one_route_version_have_one_winner(store: RegistryStore) -> None:
    for name in ("billing-x", "billing-y"):
        await store.register(ModuleRecord(metadata=make_metadata(name), source_uri="b", state=ModuleState.VALIDATING))
    results = await asyncio.gather(
        store.publish("billing-x", expected_version=1),
        store.publish("billing-y", expected_version=1),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, ModuleRecord)]
    losers = [r for r in results if not isinstance(r, ModuleRecord)]
    assert len(winners) == 1
    assert winners[0].version == 1
    assert len(losers) == 1
    assert isinstance(losers[0], ConcurrentPublishError)
    loser_id = "billing-y" if winners[0].module_id == "billing-x" else "billing-x"
    assert (await store.get(loser_id)).state is ModuleState.VALIDATING  # the loser changed nothing
    [audited] = (await store.list_audit(AuditQuery()))[0]  # ...and left no audit entry
    assert audited.module_ids == (winners[0].module_id,)
    assert [r.module_id for r in (await store.resolve_route("acme", "billing")).chain] == [winners[0].module_id]


async def test_unversioned_concurrent_publishes_get_distinct_versions(store: RegistryStore) -> None:
    for name in ("billing-x", "billing-y"):
        await store.register(ModuleRecord(metadata=make_metadata(name), source_uri="b", state=ModuleState.VALIDATING))
    results = await asyncio.gather(store.publish("billing-x"), store.publish("billing-y"), return_exceptions=True)
    versions = sorted(r.version or 0 for r in results if isinstance(r, ModuleRecord))
    # Serialized into versions 1 and 2, or one lost the race for version 1 and must retry: never two v1s.
    assert versions in ([1], [1, 2])
    assert all(isinstance(r, ConcurrentPublishError) for r in results if not isinstance(r, ModuleRecord))


async def test_bad_requests_are_typed_and_change_nothing(store: RegistryStore) -> None:
    await store.register(
        ModuleRecord(metadata=make_metadata("billing-z"), source_uri="b", state=ModuleState.VALIDATING)
    )
    with pytest.raises(RegistryNotFoundError):
        await store.get("nope")
    with pytest.raises(RegistryNotFoundError):
        await store.resolve_route("acme", "billing")  # nothing published yet
    with pytest.raises(InvalidInputError):
        await store.list_modules(ListQuery(page_token="not-a-token"))
    with pytest.raises(InvalidInputError):
        ListQuery(page_size=0)
    await store.invalidate(ModuleWithdrawn(module_id="billing-z"), event_id="e")
    with pytest.raises(IllegalTransitionError):
        await store.publish("billing-z")
    assert (await store.get("billing-z")).state is ModuleState.INVALIDATED


async def test_route_decisions_are_recorded_once_newest_first(store: RegistryStore) -> None:
    def decision(event_id: str, minute: int) -> RouteDecision:
        return RouteDecision(
            event_id=event_id, request_id=f"req-{event_id}", tenant_id="acme", route="billing", path="module",
            module_ids=("system-a", "billing-a"), module_version=3, rule="intent=refund", confidence=0.97,
            reason="rule matched", decided_at=datetime(2026, 1, 1, 0, minute, tzinfo=UTC),
        )  # fmt: skip

    assert await store.record_route_decision(decision("e1", 1))
    assert await store.record_route_decision(decision("e2", 2))
    assert not await store.record_route_decision(decision("e1", 1))  # a redelivery
    recorded = await store.route_decisions("acme")
    assert [d.event_id for d in recorded] == ["e2", "e1"]
    assert recorded[1] == decision("e1", 1)
    assert await store.route_decisions("globex") == []


async def test_ttl_expiry_announces_module_expired(store: RegistryStore) -> None:
    due = make_metadata("billing-old", expires_at="2026-01-01T00:00:00Z")
    fresh = make_metadata("shipping-new", route="shipping", expires_at="2027-01-01T00:00:00Z")
    for meta in (due, fresh):
        await store.register(ModuleRecord(metadata=meta, source_uri="s", state=ModuleState.VALIDATING))
        await store.publish(meta.module_id)
    seen = len(await store.changes_since(0))
    expired = await store.invalidate(TtlElapsed(now=datetime(2026, 6, 1, tzinfo=UTC)), event_id="ttl-1")
    assert [r.module_id for r in expired] == ["billing-old"]
    [change] = await store.changes_since(seen)
    assert (change.subject, change.module_id, change.state) == (
        "cag.module.expired",
        "billing-old",
        ModuleState.EXPIRED,
    )


async def test_change_feed_carries_event_ids_and_shows_a_tenant_its_own_and_public_modules(
    store: RegistryStore,
) -> None:
    metas = [
        make_metadata("billing-acme"),
        make_metadata("billing-globex", tenant_id="globex"),
        make_metadata("faq-public", tenant_id="public", route="faq", acl_scope=AclScope.PUBLIC),
    ]
    for meta in metas:
        await store.register(ModuleRecord(metadata=meta, source_uri="s", state=ModuleState.VALIDATING))
        await store.publish(meta.module_id)
    feed = await store.changes_since(0, tenant_id="acme")
    assert [c.module_id for c in feed] == ["billing-acme", "faq-public"]
    assert all(c.event_id and c.reason == "published by system" for c in feed)
    assert len({c.event_id for c in await store.changes_since(0)}) == 3


def record(module_id: str, **changes: object) -> ModuleRecord:
    return ModuleRecord(metadata=make_metadata(module_id, **changes), source_uri="b", state=ModuleState.VALIDATING)


async def audit_trail(store: RegistryStore, tenant_id: str | None = None) -> list[AuditEntry]:
    return (await store.list_audit(AuditQuery(tenant_id=tenant_id)))[0]


async def test_publish_rollback_and_invalidate_are_audited_with_who_what_why_and_event_id(
    store: RegistryStore,
) -> None:
    for name in ("billing-a", "billing-b"):
        await store.register(record(name))
        await store.publish(name, by=Attribution(actor="user:alice"))
    await store.rollback("acme", "billing", 1, by=Attribution(actor="user:bob", reason="bad answers in v2"))
    withdrawn = await store.invalidate(
        ModuleWithdrawn(module_id="billing-b"), event_id="evt-w", by=Attribution(actor="user:carol", reason="leak")
    )
    trail = await audit_trail(store, "acme")

    assert [(e.action, e.actor, e.reason, e.version, e.module_ids) for e in trail] == [
        (AuditAction.INVALIDATE, "user:carol", "leak", None, ("billing-b",)),
        (AuditAction.ROLLBACK, "user:bob", "bad answers in v2", 1, ("billing-a",)),
        (AuditAction.PUBLISH, "user:alice", "", 2, ("billing-b",)),
        (AuditAction.PUBLISH, "user:alice", "", 1, ("billing-a",)),
    ]
    assert [e.sequence for e in trail] == sorted((e.sequence for e in trail), reverse=True)
    assert all(e.tenant_id == "acme" and e.recorded_at.tzinfo is not None for e in trail)
    assert [e.route for e in trail] == ["", "billing", "billing", "billing"]
    assert trail[0].event_id == "evt-w" and trail[0].trigger.startswith("module: ")
    # Publish and Rollback are audited under the id of the event that announced them.
    feed = {c.event_id: c for c in await store.changes_since(0)}
    assert [feed[e.event_id].module_id for e in trail[1:]] == ["billing-a", "billing-b", "billing-a"]
    assert feed[trail[1].event_id].reason == "rollback to version 1 — by user:bob: bad answers in v2"
    assert feed[trail[2].event_id].reason == "published by user:alice"
    assert [r.state_reason for r in withdrawn] == [f"{trail[0].trigger} — by user:carol: leak"]


async def test_only_changes_are_audited_and_global_ones_only_without_a_tenant(store: RegistryStore) -> None:
    await store.register(record("billing-a"))
    await store.publish("billing-a")
    await store.publish("billing-a")  # already published: no change, no entry
    trigger = ModelRevised(model_name="smollm2", model_revision="rev-b")
    await store.invalidate(trigger, event_id="evt-m")
    await store.invalidate(trigger, event_id="evt-m")  # a redelivery
    await store.invalidate(ModelRevised(model_name="none", model_revision="x"), event_id="evt-none")

    everything = await audit_trail(store)
    assert [(e.event_id, e.tenant_id, e.module_ids) for e in everything[:2]] == [
        ("evt-none", EVERY_TENANT, ()),  # asked for and recorded, though it changed nothing
        ("evt-m", EVERY_TENANT, ("billing-a",)),
    ]
    assert len(everything) == 3
    assert [e.action for e in await audit_trail(store, "acme")] == [AuditAction.PUBLISH]
    assert await audit_trail(store, "globex") == []


async def test_audit_pages_newest_first(store: RegistryStore) -> None:
    await store.register(record("billing-a"))
    await store.publish("billing-a")
    for i in range(4):
        await store.rollback("acme", "billing", 1, by=Attribution(actor="user:ops", reason=f"r{i}"))
    reasons, token = [], ""
    while True:
        page, token = await store.list_audit(AuditQuery(tenant_id="acme", page_size=2, page_token=token))
        assert len(page) <= 2
        reasons += [e.reason for e in page]
        if not token:
            break
    assert reasons == ["r3", "r2", "r1", "r0", ""]
    with pytest.raises(InvalidInputError):
        await store.list_audit(AuditQuery(page_token="not-a-token"))
    with pytest.raises(InvalidInputError):
        await store.list_audit(AuditQuery(page_token=encode_audit_token(0)))
    with pytest.raises(InvalidInputError):
        AuditQuery(page_size=0)


async def test_a_quarantined_registration_is_kept_and_never_publishable(store: RegistryStore) -> None:
    kept = dataclasses.replace(record("billing-f"), state=ModuleState.QUARANTINED, state_reason="golden tests failed")
    stored = await store.register(kept)
    assert (stored.state, stored.state_reason, stored.version) == (ModuleState.QUARANTINED, "golden tests failed", None)
    assert await store.get("billing-f") == stored
    with pytest.raises(IllegalTransitionError):
        await store.publish("billing-f")
    # Any other registry-owned state in a registration is ignored.
    claimed = dataclasses.replace(record("billing-g"), state=ModuleState.PUBLISHED, state_reason="trust me", version=7)
    assert ((s := await store.register(claimed)).state, s.state_reason, s.version) == (ModuleState.VALIDATING, "", None)
    assert await audit_trail(store) == []


async def test_registering_an_id_again_repeats_only_the_very_same_file(store: RegistryStore) -> None:
    first = ModuleRecord(
        metadata=make_metadata("m-1"), source_uri="s", header_sha256="a" * 64, state=ModuleState.VALIDATING
    )
    stored = await store.register(first)
    assert await store.register(first) == stored
    resigned = dataclasses.replace(first, header_sha256="b" * 64)  # same tensors, an edited header
    other_tensors = dataclasses.replace(first, metadata=make_metadata("m-1", tensor_checksum="blake3:" + "f" * 64))
    for refused in (resigned, other_tensors):
        with pytest.raises(AlreadyRegisteredError):
            await store.register(refused)
    assert (await store.get("m-1")).header_sha256 == "a" * 64


# ---------------------------------------------------------------- quarantine


async def test_quarantine_is_a_change_with_an_event_and_an_audit_entry_once(store: RegistryStore) -> None:
    record = ModuleRecord(
        metadata=make_metadata("m-q", tenant_id="acme", route="billing"), source_uri="s", state=ModuleState.VALIDATING
    )
    await store.register(record)
    await store.publish("m-q")
    by = Attribution(actor="service:cachepool", reason="tensor checksum mismatch in host RAM")
    quarantined = await store.quarantine("m-q", by.reason, by=by)
    assert (quarantined.state, quarantined.state_reason) == (ModuleState.QUARANTINED, by.reason)
    again = await store.quarantine("m-q", "a second copy failed too", by=by)
    assert again.state_reason == by.reason  # nothing changed the second time
    changes = await store.changes_since(0)
    assert [(c.module_id, c.state) for c in changes][-1] == ("m-q", ModuleState.QUARANTINED)
    assert sum(c.state is ModuleState.QUARANTINED for c in changes) == 1
    assert "service:cachepool" in changes[-1].reason
    [entry, _published] = await audit_trail(store, "acme")
    assert (entry.action, entry.actor, entry.reason, entry.module_ids) == (
        AuditAction.QUARANTINE, "service:cachepool", by.reason, ("m-q",)
    )  # fmt: skip
    assert entry.event_id == changes[-1].event_id


# ---------------------------------------------------------------- route rules


def _rules(route: str = "billing") -> RuleSet:
    return RuleSet(
        tenant_id="acme",
        version=0,
        rules=(
            RouteRule(rule_id="intent", route=route, metadata={"intent": "billing"}),
            RouteRule(rule_id="words", route=route, keywords=("refund", "money back")),
        ),
        routes=(RouteInfo(route=route, description="Invoices and refunds", priority=3),),
    )


async def test_route_rules_are_versioned_per_tenant_and_kept(store: RegistryStore) -> None:
    assert await store.get_route_rules("acme") == RuleSet(tenant_id="acme", version=0)
    first = await store.put_route_rules(_rules())
    second = await store.put_route_rules(_rules("shipping"), expected_version=1)
    assert (first.version, second.version) == (1, 2)
    assert first.updated_at is not None
    newest = await store.get_route_rules("acme")
    assert (newest.version, newest.rules, newest.routes) == (2, second.rules, second.routes)
    old = await store.get_route_rules("acme", 1)
    assert (old.rules, old.routes) == (_rules().rules, _rules().routes)  # versions are immutable
    assert (await store.get_route_rules("globex")).version == 0  # tenants do not share rules
    with pytest.raises(RegistryNotFoundError):
        await store.get_route_rules("acme", 3)


async def test_a_stale_expected_version_changes_nothing(store: RegistryStore) -> None:
    await store.put_route_rules(_rules())
    with pytest.raises(RuleSetVersionConflictError):
        await store.put_route_rules(_rules("shipping"), expected_version=0 + 2)
    assert (await store.get_route_rules("acme")).version == 1
    [entry] = [e for e in await audit_trail(store, "acme") if e.action is AuditAction.PUT_ROUTE_RULES]
    assert (entry.version, entry.module_ids) == (1, ())


async def test_route_rule_changes_stay_out_of_the_module_feed(store: RegistryStore) -> None:
    await store.put_route_rules(_rules())
    assert await store.changes_since(0) == []
