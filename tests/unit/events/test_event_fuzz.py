"""Event fuzzing as a permanent test (issue 6): every consumer of the registry under hostile envelopes.

Pure properties of the shared consumer (parse → validate → handle → verdict), with the registry's own
handlers over a recording core: many examples, no servers. A long run: `CAG_FUZZ_EXAMPLES=5000`.
tests/integration/events/test_event_fuzz.py pushes a bounded sample through real NATS and Postgres.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given

from cag.events.consumer import EventConsumer, InvalidEventError, Outcome, Redelivery, parse_event
from cag.registry.handlers import invalidation_consumer, route_audit_consumer
from tests.support.event_fuzz import Case, any_cases, check_accepted, fuzz_settings, hostile_cases, valid_cases

EXAMPLES = 200
POLICY = Redelivery(max_deliver=4, backoff_s=(1.0, 5.0), ack_wait_s=30.0)


@dataclass
class RecordingCore:
    """Stands in for RegistryCore: remembers what reached it; fails on demand (the database away)."""

    fail: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def invalidate(self, caller: Any, trigger: Any, *, event_id: str) -> tuple[str, list[Any]]:
        self.calls.append((event_id, trigger))
        if self.fail:
            raise ConnectionError("database away")
        return event_id, []

    async def record_route_decision(self, decision: Any) -> bool:
        self.calls.append((decision.event_id, decision))
        if self.fail:
            raise ConnectionError("database away")
        return True


CONSUMERS = {"registry-invalidations": invalidation_consumer, "registry-route-audit": route_audit_consumer}


def consumer_of(name: str, core: RecordingCore) -> EventConsumer[Any]:
    return CONSUMERS[name](core, POLICY)  # type: ignore[arg-type]


def template(name: str) -> EventConsumer[Any]:
    """The consumer's description (schemas, filter) for building cases; its handler is not used."""
    return consumer_of(name, RecordingCore())


def deliver_until_settled(consumer: EventConsumer[Any], case: Case) -> tuple[Outcome, int]:
    """Deliver as JetStream would (delivery 1, 2, …) until the consumer stops asking for a retry."""
    delivery = 0
    while True:
        delivery += 1
        assert delivery <= consumer.redelivery.max_deliver, "asked for a delivery past max_deliver: a loop"
        verdict = asyncio.run(consumer.judge(case.body, subject=case.subject, delivery=delivery))
        if verdict.outcome is not Outcome.RETRY:
            return verdict.outcome, delivery
        assert verdict.delay_s > 0, "an immediate redelivery loops hot"


@pytest.mark.parametrize("name", CONSUMERS)
def test_hostile_events_are_dead_lettered_at_once_and_never_reach_the_handler(name: str) -> None:
    @fuzz_settings(EXAMPLES)
    @given(case=hostile_cases(template(name)))
    def check(case: Case) -> None:
        core = RecordingCore()
        assert deliver_until_settled(consumer_of(name, core), case) == (Outcome.DEAD_LETTER, 1)
        assert core.calls == []

    check()


@pytest.mark.parametrize("name", CONSUMERS)
def test_valid_events_are_applied_on_the_first_delivery(name: str) -> None:
    @fuzz_settings(EXAMPLES)
    @given(case=valid_cases(template(name)))
    def check(case: Case) -> None:
        core = RecordingCore()
        consumer = consumer_of(name, core)
        assert deliver_until_settled(consumer, case) == (Outcome.APPLIED, 1)
        envelope, _ = parse_event(case.body, subject=case.subject, accepts=consumer.accepts)
        assert [event_id for event_id, _ in core.calls] == [envelope.event_id]

    check()


@pytest.mark.parametrize("name", CONSUMERS)
def test_any_event_is_settled_within_max_deliver_even_when_the_handler_always_fails(name: str) -> None:
    @fuzz_settings(EXAMPLES)
    @given(case=any_cases(template(name)))
    def check(case: Case) -> None:
        core = RecordingCore(fail=True)
        consumer = consumer_of(name, core)
        try:
            envelope, payload = parse_event(case.body, subject=case.subject, accepts=consumer.accepts)
        except InvalidEventError:
            assert case.valid is not True, "a valid event was refused"
            assert deliver_until_settled(consumer, case) == (Outcome.DEAD_LETTER, 1)
            assert core.calls == []
            return
        assert case.valid is not False, "a hostile event was accepted"
        check_accepted(envelope, payload, subject=case.subject)
        # Tried exactly max_deliver times, then dead-lettered: never retried forever.
        assert deliver_until_settled(consumer, case) == (Outcome.DEAD_LETTER, POLICY.max_deliver)
        assert len(core.calls) == POLICY.max_deliver

    check()


@pytest.mark.parametrize("name", CONSUMERS)
def test_parsing_never_fails_any_other_way(name: str) -> None:
    """Whatever the bytes, `parse_event` returns a checked event or says why not (InvalidEventError)."""

    @fuzz_settings(EXAMPLES)
    @given(case=any_cases(template(name)))
    def check(case: Case) -> None:
        consumer = template(name)
        try:
            envelope, payload = parse_event(case.body, subject=case.subject, accepts=consumer.accepts)
        except InvalidEventError as e:
            reason = str(e)
        else:
            check_accepted(envelope, payload, subject=case.subject)
            return
        assert len(reason) < 4_000, "the reason quotes the whole body"

    check()
