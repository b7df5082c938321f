"""The audit of decisions is best effort: a request never waits for it or fails by it, and what is not published
is counted (DecisionAudit.dropped and the cag_route_audit_dropped metric)."""

from __future__ import annotations

import asyncio

from cag.acl import AclScope
from cag.events.schemas import Envelope, RouteDecidedV1
from cag.router.audit import DecisionAudit
from cag.router.core import AnswerPath, Basis, Decision, ModuleLink
from cag.telemetry.metrics import REGISTRY


def decision(decision_id: str) -> Decision:
    link = ModuleLink(
        module_id="acme-billing", version=3, acl_scope=AclScope.TENANT, tenant_id="acme", acl_principal=""
    )
    return Decision(
        decision_id=decision_id,
        tenant_id="acme",
        route="billing",
        chain=(link,),
        basis=Basis.RULE,
        rule_id="invoice-words",
        rule_version=2,
        confidence=1.0,
        path=AnswerPath.MODULE,
        reason="rule invoice-words",
    )


class Outbox:
    """A publisher that keeps what it is given, fails while `down`, and holds publishes while `held` is clear."""

    def __init__(self) -> None:
        self.published: list[Envelope] = []
        self.down = False
        self.held = asyncio.Event()
        self.held.set()

    async def __call__(self, envelope: Envelope) -> None:
        await self.held.wait()
        if self.down:
            raise ConnectionError("nats: no servers available for connection")
        self.published.append(envelope)


def dropped_metric() -> float:
    return REGISTRY.get_sample_value("cag_route_audit_dropped_total") or 0.0


async def test_a_decision_is_published_with_its_id_as_the_event_id() -> None:
    outbox = Outbox()
    audit = DecisionAudit(outbox)
    audit.record(decision("d-1"))
    await audit.drain(5.0)
    [envelope] = outbox.published
    assert envelope.event_id == "d-1" and envelope.subject == RouteDecidedV1.subject
    event = RouteDecidedV1.model_validate(envelope.data)
    assert (event.route, event.module_ids, event.module_version, event.rule) == (
        "billing",
        ["acme-billing"],
        3,
        "invoice-words",
    )
    assert audit.dropped == 0


async def test_a_failed_publish_is_counted_and_never_raised() -> None:
    outbox, before = Outbox(), dropped_metric()
    outbox.down = True
    audit = DecisionAudit(outbox)
    audit.record(decision("d-1"))  # returns at once: the request goes on
    await audit.drain(5.0)
    assert (audit.dropped, dropped_metric() - before, outbox.published) == (1, 1, [])


async def test_beyond_the_bound_of_pending_publishes_decisions_are_dropped_not_queued() -> None:
    outbox, before = Outbox(), dropped_metric()
    outbox.held.clear()  # NATS slow: nothing completes
    audit = DecisionAudit(outbox, max_in_flight=2)
    for n in range(5):
        audit.record(decision(f"d-{n}"))
    assert audit.dropped == 3
    outbox.held.set()
    await audit.drain(5.0)
    assert [e.event_id for e in outbox.published] == ["d-0", "d-1"]
    assert dropped_metric() - before == 3


async def test_drain_gives_up_on_publishes_that_do_not_finish_and_counts_them() -> None:
    outbox = Outbox()
    outbox.held.clear()
    audit = DecisionAudit(outbox)
    audit.record(decision("d-1"))
    await audit.drain(0.05)
    assert (audit.dropped, outbox.published) == (1, [])
