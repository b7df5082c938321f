"""Wiring of the fallback service: the chunk index, the embedding model, the source followers, the cache-pool
client and the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key
from cag.events.bus import make_broker, publish_event
from cag.events.consumer import start_broker
from cag.events.schemas import Envelope
from cag.fallback.answering import Answerer
from cag.fallback.approval import Approver, CompileTarget
from cag.fallback.candidate_store import CandidateStore
from cag.fallback.core.chunking import ChunkLimits
from cag.fallback.core.evidence_order import EvidenceOrder, EvidenceTrie, RetrievalOrder
from cag.fallback.embedder import Embeds
from cag.fallback.index import ChunkIndex
from cag.fallback.indexing import Indexer
from cag.fallback.promotion import Promotion
from cag.fallback.promotion_handlers import subscribe_promotion
from cag.fallback.promotion_rpc import PromotionRpcs
from cag.fallback.reindexing import Reindexing
from cag.fallback.servicer import SERVICE_NAME, FallbackServicer
from cag.fallback.settings import FallbackSettings
from cag.fallback.sources import SourceFollower, subscribe_sources
from cag.layout import layout_json, load_layout
from cag.lifecycle import bounded
from cag.objectstore import ObjectStore
from cag.objectstore.s3 import S3Settings
from cag.rpc.clients import AsyncCachePoolClient, AsyncRegistryClient
from cag.rpc.clients.compiler import AsyncCompilerClient
from cag.rpc.server import ServiceServer, build_server
from cag.rpc.tls import ClientTls, client_tls, server_tls
from cag.service_process import run_until_signalled
from cag.telemetry.metrics import serve_service_metrics
from cag.v1 import fallback_pb2_grpc

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


def evidence_order_of(settings: FallbackSettings) -> EvidenceOrder:
    if settings.evidence_order == "cacheweaver":
        return EvidenceTrie(settings.evidence_trie_nodes)
    return RetrievalOrder()


@dataclass
class FallbackApp:
    settings: FallbackSettings
    # Given by tests that share one model; otherwise all-MiniLM-L6-v2 is loaded at start.
    embedder: Embeds | None = None
    order: EvidenceOrder | None = None
    database: AsyncEngine | None = None
    registry: AsyncRegistryClient | None = None
    pool: AsyncCachePoolClient | None = None
    compiler: AsyncCompilerClient | None = None
    broker: NatsBroker | None = None
    server: ServiceServer | None = None

    async def start(self) -> None:
        s = self.settings
        listen_tls, tls = server_tls(s), client_tls(s)  # a TLS setting wrong: refused before anything starts
        key = load_key(s.auth_key_file)
        token = issue_token(key, s.subject, [Scope.READ, Scope.WRITE], [ALL_TENANTS], s.token_ttl_s)
        layout = layout_json(load_layout(s.layout))
        if self.embedder is None:
            from cag.embedding import MiniLMEmbedder  # loads torch: only when no model was given

            self.embedder = await asyncio.to_thread(MiniLMEmbedder.load)
        self.database = create_async_engine(s.database_url, pool_size=4, pool_pre_ping=True)
        index = ChunkIndex(self.database)
        await index.create_tables()
        self.registry = AsyncRegistryClient(s.registry_address, token=token, tls=tls)
        self.pool = AsyncCachePoolClient(s.cachepool_address, token=token, tls=tls)
        store = ObjectStore(S3Settings.of(s.infra))
        indexer = Indexer(index, self.embedder, ChunkLimits(max_chars=s.chunk_max_chars), store)
        self.broker = make_broker(s.nats_url)
        reindexing = Reindexing()
        follower = SourceFollower(indexer, self.registry, reindexing)
        subscribe_sources(self.broker, follower, s.group, s.redelivery)
        promotion = await self._promotion(token, tls, self.database, self.registry, self.embedder, self.broker)
        subscribe_promotion(self.broker, promotion, s.group, s.redelivery)
        await start_broker(self.broker)
        log.info("fallback: %d source(s) of published modules indexed", await follower.index_published())
        order = self.order or evidence_order_of(s)
        answerer = Answerer(
            index, self.embedder, order, self.pool, self.broker, layout_json=layout, top_k=s.top_k,
            reindexing=reindexing, reindex_wait_s=s.reindex_wait_s,
        )  # fmt: skip
        self.server = await build_server(
            [
                (
                    fallback_pb2_grpc.add_FallbackServiceServicer_to_server,
                    FallbackServicer(answerer, indexer, PromotionRpcs(promotion), router_subject=s.router_subject),
                )
            ],
            [SERVICE_NAME],
            s.address,
            auth=key,
            reflection=s.reflection,
            tls=listen_tls,
            health_address=s.health_address,
        )
        serve_service_metrics(s)
        await self.server.start()
        log.info("fallback serving on %s", s.address)

    async def _promotion(
        self,
        token: str,
        tls: ClientTls | None,
        database: AsyncEngine,
        registry: AsyncRegistryClient,
        embedder: Embeds,
        broker: NatsBroker,
    ) -> Promotion:
        """Candidates from served fallbacks; approvals compile through the compiler and route through the registry."""
        s, p = self.settings, self.settings.promotion
        candidates = CandidateStore(database, p.policy)
        await candidates.create_tables()
        self.compiler = AsyncCompilerClient(p.compiler_address, token=token, tls=tls)
        target = CompileTarget(
            model=p.promotion_model, layout_file=p.promotion_layout_file or s.layout, promotions_dir=p.promotions_dir
        )
        approver = Approver(database, self.compiler, registry, target)

        async def publish(envelope: Envelope) -> None:
            await publish_event(broker, envelope)

        return Promotion(candidates, embedder, publish, approver)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=self.settings.shutdown_grace_s)
        if self.broker is not None:
            await bounded(self.broker.stop(), "NATS broker", STOP_TIMEOUT_S)
        for client in (self.pool, self.registry, self.compiler):
            if client is not None:
                await client.close()
        if self.database is not None:
            await self.database.dispose()


async def serve(settings: FallbackSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (cag.service_process)."""
    await run_until_signalled(FallbackApp(settings), "fallback")
