"""Wiring of the registry service: Postgres (migrated at start), the gRPC server, the NATS consumer,
the outbox relay and the TTL job, built through constructors from typed settings."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial

from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from cag.auth.tokens import load_key
from cag.events.bus import make_broker, publish_event
from cag.events.consumer import start_broker
from cag.lifecycle import StopSignal, bounded
from cag.registry.core import RegistryCore
from cag.registry.core.ttl import run_ttl_job
from cag.registry.db.engine import connect, session_factory
from cag.registry.db.store import PostgresStore
from cag.registry.handlers import subscribe_invalidations, subscribe_route_decisions
from cag.registry.outbox import OutboxRelay
from cag.registry.servicer import RegistryServicer
from cag.registry.settings import RegistrySettings
from cag.rpc.server import ServiceServer, build_server
from cag.rpc.tls import server_tls
from cag.service_process import run_until_signalled, service_main
from cag.telemetry.metrics import serve_service_metrics
from cag.v1 import registry_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = "cag.v1.RegistryService"
STOP_TIMEOUT_S = 10.0


@dataclass
class RegistryApp:
    settings: RegistrySettings
    engine: AsyncEngine | None = None
    broker: NatsBroker | None = None
    server: ServiceServer | None = None
    core: RegistryCore | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: StopSignal = field(default_factory=StopSignal)

    async def start(self) -> None:
        s = self.settings
        listen_tls = server_tls(s)  # a TLS setting wrong: refused before anything starts
        self.engine = await asyncio.to_thread(connect, s.database_url, pool_size=s.pool_size)  # runs migrations
        sessions = session_factory(self.engine)
        self.core = RegistryCore(PostgresStore(sessions), s.infra.roots)
        self.broker = make_broker(s.nats_url)
        subscribe_invalidations(self.broker, self.core, s.redelivery)
        subscribe_route_decisions(self.broker, self.core, s.redelivery)
        await start_broker(self.broker)  # also bounds redelivery on durables created before
        relay = OutboxRelay(sessions, partial(publish_event, self.broker), poll_interval_s=s.outbox_poll_s)
        self.tasks = [
            asyncio.create_task(relay.run(self.stopping), name="outbox-relay"),
            asyncio.create_task(run_ttl_job(self.core, s.ttl_interval_s, self.stopping), name="ttl-job"),
        ]
        servicer = RegistryServicer(self.core, poll_interval=s.watch_poll_s, stopping=self.stopping)
        self.server = await build_server(
            [(registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer)],
            [SERVICE_NAME],
            s.address,
            auth=load_key(s.auth_key_file),
            reflection=s.reflection,
            tls=listen_tls,
            health_address=s.health_address,
        )
        serve_service_metrics(s)
        await self.server.start()
        log.info("registry serving on %s", s.address)

    async def stop(self) -> None:
        """Graceful, bounded shutdown: new RPCs are refused, in-flight ones get `shutdown_grace_s` to finish
        (open Watch streams end at once), then the consumers, the relay and the TTL job stop, each within
        STOP_TIMEOUT_S so a stuck peer cannot hang the process."""
        self.stopping.set()
        if self.server is not None:
            await self.server.stop(grace=self.settings.shutdown_grace_s)
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:
                log.warning("%s did not stop within %.0f s; cancelling it", task.get_name(), STOP_TIMEOUT_S)
                task.cancel()
        if self.broker is not None:
            await bounded(self.broker.stop(), "NATS broker", STOP_TIMEOUT_S)
        if self.engine is not None:
            await bounded(self.engine.dispose(), "database pool", STOP_TIMEOUT_S)


async def serve(settings: RegistrySettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (cag.service_process)."""
    await run_until_signalled(RegistryApp(settings), "registry")


def main() -> int:
    """Entry point of `python -m cag.registry` (a container's command): settings from the environment only."""
    return service_main("registry", RegistrySettings, lambda: serve)
