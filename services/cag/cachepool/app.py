"""Wiring of the cache pool service: the engine, the tiers, the registry's feed, the NATS consumers and the gRPC
server, built through constructors from typed settings."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from transformers import AutoTokenizer

from cag.auth import ALL_TENANTS
from cag.auth.tokens import issue_token, load_key
from cag.cachepool.announcer import Announcer, AnnouncerSettings, state_of
from cag.cachepool.answer import Answerer
from cag.cachepool.convert import change_of
from cag.cachepool.core import Residency
from cag.cachepool.handlers import subscribe_withdrawals
from cag.cachepool.metrics import PoolCollector
from cag.cachepool.pool import CachePool, ServingEngine
from cag.cachepool.prompts import PromptBook
from cag.cachepool.registry_link import RegistryLink
from cag.cachepool.scheduler import Scheduler
from cag.cachepool.servicer import SERVICE_NAME, CachePoolServicer, ServingLimits
from cag.cachepool.settings import CachePoolSettings
from cag.cachepool.tiers import DiskTier, Origins
from cag.engine import load_engine
from cag.events.bus import make_broker
from cag.events.consumer import start_broker
from cag.events.replica_bucket import AnnouncementWriter, create_bucket
from cag.events.replica_bucket import connect as connect_nats
from cag.lifecycle import bounded
from cag.models import resolve_model
from cag.objectstore.s3 import S3Settings
from cag.rpc.auth import authenticated_channel
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.server import ServiceServer, build_server
from cag.rpc.tls import client_tls, server_tls
from cag.rpc.watch import RegistryFollower
from cag.service_process import run_until_signalled
from cag.telemetry.metrics import REGISTRY, serve_service_metrics
from cag.v1 import cachepool_pb2_grpc, registry_pb2

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


def load_serving_engine(settings: CachePoolSettings) -> ServingEngine:
    """The engine this pool serves with."""
    model = resolve_model(settings.model, settings.models_dir)
    capacity = settings.kv_capacity_tokens or None
    engine: ServingEngine = load_engine(settings.engine, model, settings.dtype, kv_capacity=capacity)
    return engine


def load_tokenizer(settings: CachePoolSettings) -> PromptBook:
    model = resolve_model(settings.model, settings.models_dir)
    return PromptBook(AutoTokenizer.from_pretrained(model.tokenizer_path))


@dataclass
class CachePoolApp:
    settings: CachePoolSettings
    # Given by tests that share one engine across apps; otherwise loaded from the settings at start.
    engine: ServingEngine | None = None
    pool: CachePool | None = None
    server: ServiceServer | None = None
    broker: NatsBroker | None = None
    registry: AsyncRegistryClient | None = None
    channel: grpc.aio.Channel | None = None
    executor: ThreadPoolExecutor | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    announcer: Announcer | None = None
    announcing: asyncio.Task[None] | None = None
    announcements: NatsClient | None = None

    async def start(self) -> None:
        s = self.settings
        listen_tls, tls = server_tls(s), client_tls(s)  # a TLS setting wrong: refused before anything starts
        key = load_key(s.auth_key_file)
        token = issue_token(key, s.subject, s.registry_scopes, [ALL_TENANTS], s.token_ttl_s)
        engine = self.engine if self.engine is not None else await asyncio.to_thread(load_serving_engine, s)
        prompts = await asyncio.to_thread(load_tokenizer, s)
        self.executor = ThreadPoolExecutor(s.load_threads + 2 * s.max_running, thread_name_prefix="cachepool")
        self.registry = AsyncRegistryClient(s.registry_address, token=token, tls=tls)
        self.channel = authenticated_channel(s.registry_address, token, tls)
        bytes_per_token = engine.kv_shape.bytes_per_token
        residency = Residency(s.pool_settings(engine.kv_capacity * bytes_per_token, bytes_per_token))
        pool = self.pool = CachePool(
            engine=engine,
            registry=RegistryLink(self.registry, self.channel),
            residency=residency,
            disk=DiskTier(s.disk_dir, Origins(S3Settings.of(s.infra))),
            executor=self.executor,
            promotion=s.promotion_rule,
        )
        log.info("local disk tier: %d module(s) kept from before", await asyncio.to_thread(pool.index_disk))

        async def on_change(change: registry_pb2.ModuleChange) -> None:
            pool.apply_change(change_of(change))

        follower = RegistryFollower(self.registry, on_change, on_caught_up=pool.on_caught_up)
        self.tasks = [asyncio.create_task(follower.run(), name="registry-follower")]
        self.broker = make_broker(s.nats_url)
        subscribe_withdrawals(self.broker, pool, s.instance, s.redelivery)
        await start_broker(self.broker)
        limits = ServingLimits(
            router_subject=s.router_subject,
            fallback_subject=s.fallback_subject,
            default_max_new_tokens=s.default_max_new_tokens,
            max_new_tokens_limit=s.max_new_tokens_limit,
        )
        scheduler = Scheduler(s.queue_limits)
        servicer = CachePoolServicer(Answerer(pool, scheduler, prompts, self.executor), limits, replica_id=s.replica)
        if s.metrics_port:
            REGISTRY.register(PoolCollector(pool, scheduler))
        serve_service_metrics(s)
        self.server = await build_server(
            [(cachepool_pb2_grpc.add_CachePoolServiceServicer_to_server, servicer)],
            [SERVICE_NAME],
            s.address,
            auth=key,
            reflection=s.reflection,
            tls=listen_tls,
            health_address=s.health_address,
        )
        await self.server.start()
        log.info("cache pool serving on %s", s.address)
        if s.announce:
            await self._announce(pool, scheduler)

    async def _announce(self, pool: CachePool, scheduler: Scheduler) -> None:
        """Announces this replica (what it holds, its load) in the replica bucket, from now until `stop`."""
        s = self.settings
        nc = self.announcements = await connect_nats(s.nats_url)
        bucket = await create_bucket(nc, s.announce_ttl_s)
        settings = AnnouncerSettings(
            replica_id=s.replica, address=s.address, capacity=s.max_running,
            heartbeat_s=s.announce_heartbeat_s, poll_s=s.announce_poll_s,
        )  # fmt: skip
        self.announcer = Announcer(
            settings,
            AnnouncementWriter(bucket, s.replica),
            lambda: state_of(pool.residency.stats(pool.now()), queued=scheduler.queued, running=scheduler.running),
            ready=lambda: pool.snapshot.caught_up,  # it serves once it has the registry's snapshot
        )
        self.announcing = asyncio.create_task(self.announcer.run(), name="announcer")
        log.info("announcing as replica %s", s.replica)

    async def stop(self) -> None:
        """Graceful, bounded: new RPCs are refused, in-flight ones get `shutdown_grace_s`, then the feed, the
        consumers and the registry channels stop."""
        if self.announcing is not None:
            self.announcing.cancel()  # it only waits on NATS: cancelling is safe
            await asyncio.gather(self.announcing, return_exceptions=True)
        if self.announcer is not None:
            await self.announcer.withdraw()  # routers stop sending requests here before the server refuses them
        if self.server is not None:
            await self.server.stop(grace=self.settings.shutdown_grace_s)
        for task in self.tasks:
            task.cancel()  # the follower only waits on the registry's stream: cancelling it is safe
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.broker is not None:
            await bounded(self.broker.stop(), "NATS broker", STOP_TIMEOUT_S)
        if self.announcements is not None:
            await bounded(self.announcements.close(), "NATS announcements", STOP_TIMEOUT_S)
        if self.registry is not None:
            await self.registry.close()
        if self.channel is not None:
            await self.channel.close(grace=None)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


async def serve(settings: CachePoolSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (cag.service_process)."""
    await run_until_signalled(CachePoolApp(settings), "cachepool")
