"""Wiring of the router service: its service token, the registry's feed into the route snapshot, the classifier
(only when enabled: it loads torch), the audit publisher, the cache pool client and the gRPC server, built
through constructors from typed settings."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key, load_key_set
from cag.events.bus import make_broker, publish_event
from cag.events.consumer import start_broker
from cag.events.replica_bucket import connect as connect_nats
from cag.events.replica_bucket import follow_replicas
from cag.lifecycle import bounded
from cag.router.audit import DecisionAudit
from cag.router.core import Classifier, Router, RouteSnapshot
from cag.router.core.replica_directory import ReplicaDirectory
from cag.router.handlers import subscribe_rule_updates
from cag.router.replicas import STATIC_REPLICA, CachePoolReplicas
from cag.router.routes import RegistryRoutes
from cag.router.routing import Decider
from cag.router.servicer import SERVICE_NAME, RouterServicer
from cag.router.settings import RouterSettings
from cag.rpc.clients import AsyncCachePoolClient, AsyncRegistryClient
from cag.rpc.clients.fallback import AsyncFallbackClient
from cag.rpc.server import ServiceServer, build_server
from cag.rpc.tls import ClientTls, client_tls, server_tls
from cag.rpc.watch import RegistryFollower
from cag.service_process import run_until_signalled
from cag.telemetry.metrics import serve_service_metrics
from cag.v1 import router_pb2_grpc

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


def load_classifier(settings: RouterSettings) -> Classifier | None:
    if not settings.classifier_enabled:
        return None
    from cag.router.classifier import MiniLMClassifier  # only now: its model loads torch

    return MiniLMClassifier.load()


@dataclass
class RouterApp:
    settings: RouterSettings
    server: ServiceServer | None = None
    broker: NatsBroker | None = None
    registry: AsyncRegistryClient | None = None
    replicas: CachePoolReplicas | None = None
    fallback: AsyncFallbackClient | None = None
    announcements: NatsClient | None = None
    audit: DecisionAudit | None = None
    routes: RegistryRoutes | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Returns once the gRPC server listens. It starts listening only when the route snapshot has caught
        up with the registry's feed, so that health checks (and requests) find the router ready."""
        s = self.settings
        listen_tls, tls = server_tls(s), client_tls(s)  # a TLS setting wrong: refused before anything starts
        keys = load_key_set(s.auth_key_file, s.infra.auth_jwks_file)
        token = issue_token(load_key(s.auth_key_file), s.subject, [Scope.READ], [ALL_TENANTS], s.token_ttl_s)
        classifier = await asyncio.to_thread(load_classifier, s)
        self.registry = AsyncRegistryClient(s.registry_address, token=token, timeout_s=s.registry_timeout_s, tls=tls)
        routes = self.routes = RegistryRoutes(self.registry, RouteSnapshot(), timeout_s=s.registry_timeout_s)
        follower = RegistryFollower(self.registry, routes.on_change, on_caught_up=routes.on_caught_up)
        self.tasks = [asyncio.create_task(follower.run(), name="registry-follower")]
        self.broker = make_broker(s.nats_url)
        subscribe_rule_updates(self.broker, routes, s.instance, s.redelivery)
        await start_broker(self.broker)
        broker = self.broker
        self.audit = DecisionAudit(lambda envelope: publish_event(broker, envelope))
        self.replicas = await self._replicas(token, tls)
        self.fallback = AsyncFallbackClient(s.fallback_address, token=token, tls=tls)
        decider = Decider(
            Router(classifier, threshold=s.classifier_threshold), routes, max_query_chars=s.max_query_chars
        )
        self.server = await build_server(
            [
                (
                    router_pb2_grpc.add_RouterServiceServicer_to_server,
                    RouterServicer(decider, self.replicas, self.audit, self.fallback),
                )
            ],
            [SERVICE_NAME],
            s.address,
            auth=keys,
            reflection=s.reflection,
            tls=listen_tls,
            health_address=s.health_address,
        )
        await routes.caught_up.wait()
        self.tasks.append(asyncio.create_task(routes.reconcile_every(s.reconcile_interval_s), name="reconcile"))
        serve_service_metrics(s)
        await self.server.start()
        log.info("router serving on %s", s.address)

    async def _replicas(self, token: str, tls: ClientTls | None) -> CachePoolReplicas:
        """The cache-pool replicas: the one configured, or with discovery those the replica bucket announces (the
        watcher hands over every current one at once, then each change)."""
        s = self.settings
        replicas = CachePoolReplicas(
            ReplicaDirectory(), s.replica_policy, lambda address: AsyncCachePoolClient(address, token=token, tls=tls)
        )
        if not s.replica_discovery:
            replicas.directory.add_static(STATIC_REPLICA, s.cachepool_address)
            return replicas
        self.announcements = await connect_nats(s.nats_url)
        self.tasks.append(asyncio.create_task(follow_replicas(self.announcements, replicas.on_change), name="replicas"))
        return replicas

    async def stop(self) -> None:
        """Graceful, bounded: new RPCs are refused, in-flight ones get `shutdown_grace_s`, pending audit events
        a last chance, then the feed, NATS and the channels stop."""
        if self.server is not None:
            await self.server.stop(grace=self.settings.shutdown_grace_s)
        for task in self.tasks:
            task.cancel()  # the follower and the reconcile loop only wait on the registry: cancelling is safe
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.audit is not None:
            await self.audit.drain(STOP_TIMEOUT_S)
        if self.broker is not None:
            await bounded(self.broker.stop(), "NATS broker", STOP_TIMEOUT_S)
        if self.announcements is not None:
            await bounded(self.announcements.close(), "NATS announcements", STOP_TIMEOUT_S)
        for closing in (self.replicas, self.registry, self.fallback):
            if closing is not None:
                await closing.close()


async def serve(settings: RouterSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (cag.service_process)."""
    await run_until_signalled(RouterApp(settings), "router")
