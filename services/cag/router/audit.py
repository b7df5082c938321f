"""Every served decision becomes a cag.route.decided event (the registry keeps the audit trail).

Best effort, off the request path: a request never waits for NATS, and NATS being down never fails one. A
publish that fails is logged and dropped; so are decisions beyond `max_in_flight` while NATS is slow, so that
an outage cannot pile up memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from cag.events.schemas import Envelope
from cag.router.convert import decided_event
from cag.router.core import Decision
from cag.telemetry.metrics import REGISTRY

log = logging.getLogger(__name__)

# Operators see lost audit records here (the registry's trail then misses those decisions).
AUDIT_DROPPED = Counter(
    "cag_route_audit_dropped", "Route decisions whose cag.route.decided event was not published", registry=REGISTRY
)

Publish = Callable[[Envelope], Awaitable[None]]


class DecisionAudit:
    def __init__(self, publish: Publish, *, max_in_flight: int = 1000) -> None:
        self._publish = publish
        self._max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def record(self, decision: Decision) -> None:
        if len(self._in_flight) >= self._max_in_flight:
            self._drop()
            log.warning(
                "audit of decision %s dropped: %d publishes still pending", decision.decision_id, len(self._in_flight)
            )
            return
        envelope = Envelope.wrap(decided_event(decision), event_id=decision.decision_id)
        task = asyncio.create_task(self._send(envelope))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, envelope: Envelope) -> None:
        try:
            await self._publish(envelope)
        except Exception as e:  # any publish failure: logged, never the request's
            self._drop()
            log.warning("audit of decision %s not published: %s", envelope.event_id, e)

    def _drop(self) -> None:
        self.dropped += 1
        AUDIT_DROPPED.inc()

    async def drain(self, timeout_s: float) -> None:
        """Waits up to `timeout_s` for pending publishes (at shutdown), then cancels the rest (counted dropped)."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=timeout_s)
        for task in pending:
            task.cancel()
            self._drop()
