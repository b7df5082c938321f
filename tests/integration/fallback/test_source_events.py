"""The index follows cag.invalidate.source on real NATS: a changed source is read again and its chunks replaced;
an event applied once is not applied again (by its event id), even when redelivered under another message id."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from cag.acl import AclScope
from cag.embedding import MiniLMEmbedder
from cag.events.bus import make_broker, publish_event
from cag.events.consumer import Redelivery, start_broker
from cag.events.schemas import Envelope, SourceChangedV1
from cag.fallback.core.audience import Reader
from cag.fallback.core.chunking import ChunkLimits
from cag.fallback.index import Audience, ChunkIndex
from cag.fallback.indexing import Indexer, read_source
from cag.fallback.reindexing import Reindexing
from cag.fallback.sources import SourceFollower, subscribe_sources
from cag.lifecycle import bounded
from cag.rpc.clients import AsyncRegistryClient
from tests.infra_fixtures import Infra, reachable_tmp_dir
from tests.integration.router.conftest import eventually

FAST = Redelivery(max_deliver=3, backoff_s=(0.2,), ack_wait_s=30.0)


def write_source(root: Path, text: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "refunds.md").write_text(f"---\ntitle: Refunds\n---\n{text}\n")
    return root.as_uri()


async def texts_of(index: ChunkIndex, minilm: MiniLMEmbedder, tenant: str, uri: str) -> list[str]:
    [vector] = minilm.embed(["refunds"])
    return [
        r.chunk.text for r in await index.nearest(Reader(tenant_id=tenant), vector, 20) if r.chunk.source_uri == uri
    ]


def changed(tenant: str, uri: str) -> Envelope:
    _, checksum = read_source(uri, None)
    return Envelope.wrap(SourceChangedV1(tenant_id=tenant, source_uri=uri, checksum=checksum))


async def test_a_changed_source_is_reindexed_once_per_event(
    infra: Infra, database: AsyncEngine, minilm: MiniLMEmbedder
) -> None:
    index = ChunkIndex(database)
    await index.create_tables()
    indexer = Indexer(index, minilm, ChunkLimits(), None)
    tenant, work = f"t{uuid.uuid4().hex[:8]}", reachable_tmp_dir("cag-fallback-source-")
    audience = Audience(tenant_id=tenant, scope=AclScope.TENANT)
    refunds = write_source(work / "refunds", "Refunds take 14 days.")
    other = write_source(work / "other", "Refunds of gift cards are not possible.")
    for uri in (refunds, other):
        await indexer.index_uri(uri, audience)
    broker = make_broker(infra.nats_url_for("fallback"))
    registry = AsyncRegistryClient("127.0.0.1:9", token="unused")  # source events never ask the registry
    subscribe_sources(broker, SourceFollower(indexer, registry, Reindexing()), f"t{uuid.uuid4().hex[:8]}", FAST)
    await start_broker(broker)
    ops = make_broker(infra.nats_url)
    await ops.start()
    try:
        write_source(work / "refunds", "Refunds now take 30 days.")
        event = changed(tenant, refunds)
        await publish_event(ops, event)

        async def replaced() -> bool:
            return await texts_of(index, minilm, tenant, refunds) == ["Refunds now take 30 days."]

        await eventually(replaced, "the changed source reindexed", timeout_s=30.0)
        # The same event again (another message id gets it past JetStream's dedup): the file changed once more,
        # but the event was applied already, so nothing is read. The next event is the sentinel.
        write_source(work / "refunds", "Refunds take 45 days.")
        await ops.publish(
            event.model_dump_json().encode(), event.subject, headers={"Nats-Msg-Id": "again-" + event.event_id}
        )
        write_source(work / "other", "Gift card refunds are credited to a new card.")
        await publish_event(ops, changed(tenant, other))

        async def sentinel_applied() -> bool:
            return await texts_of(index, minilm, tenant, other) == ["Gift card refunds are credited to a new card."]

        await eventually(sentinel_applied, "the sentinel event applied", timeout_s=30.0)
        assert await texts_of(index, minilm, tenant, refunds) == ["Refunds now take 30 days."]
    finally:
        await bounded(ops.stop(), "ops broker")
        await bounded(broker.stop(), "fallback broker")
        await registry.close()
