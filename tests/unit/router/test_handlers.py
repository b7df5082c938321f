"""The router's rule-update consumer on FastStream's in-memory broker (TestNatsBroker hands each message to the
subscriber inside `publish`): a newer version of a tenant's rules is fetched, a version the router already holds
(a duplicate, a late redelivery) costs no registry call. The same consumer on real NATS: tests/integration/router."""

from __future__ import annotations

from faststream.nats import TestNatsBroker

from cag.events.bus import make_broker
from cag.events.consumer import Redelivery
from cag.events.schemas import STREAM, Envelope, RoutesUpdatedV1
from cag.router.core import RouteSnapshot
from cag.router.handlers import subscribe_rule_updates
from cag.router.routes import RegistryRoutes
from cag.v1 import registry_pb2
from tests.unit.router.test_routes import MemoryRegistry

REDELIVERY = Redelivery(max_deliver=2, backoff_s=(0.1,), ack_wait_s=5.0)


async def test_a_newer_rule_version_is_fetched_and_a_held_one_is_not() -> None:
    registry = MemoryRegistry()
    registry.rules["acme"] = registry_pb2.RouteRuleSet(tenant_id="acme", version=4)
    routes = RegistryRoutes(registry, RouteSnapshot())  # type: ignore[arg-type]  # the in-memory registry
    broker = make_broker("nats://127.0.0.1:1")  # never connected: TestNatsBroker replaces the connection
    subscribe_rule_updates(broker, routes, "unit", REDELIVERY)

    async def updated(version: int) -> None:
        event = Envelope.wrap(RoutesUpdatedV1(tenant_id="acme", version=version))
        await broker.publish(event.model_dump_json().encode(), event.subject, stream=STREAM)

    async with TestNatsBroker(broker):
        await updated(4)
        held = routes.snapshot.rules("acme")
        assert held is not None and held.version == 4
        calls = registry.calls
        await updated(4)  # a duplicate
        await updated(3)  # an older version arriving late
        assert registry.calls == calls
