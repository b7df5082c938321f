"""A fallback answer, from the query to the last token: embed → retrieve (the reader's audience filtered in the
index query) → order the evidence → generate on the cache pool's engine → the summary naming each chunk used
→ `cag.fallback.served`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from faststream.nats import NatsBroker
from prometheus_client import Histogram

from cag.acl import PUBLIC_TENANT
from cag.errors import NoEvidenceError, UnavailableError
from cag.events.bus import publish_event
from cag.events.schemas import MAX_ANSWER, Envelope, FallbackServedV1
from cag.fallback.core.audience import Reader
from cag.fallback.core.evidence_order import EvidenceOrder
from cag.fallback.embedder import Embeds, embed
from cag.fallback.index import ChunkIndex, Retrieved
from cag.fallback.reindexing import Reindexing
from cag.rpc.clients import AsyncCachePoolClient
from cag.telemetry.metrics import REGISTRY, TTFT
from cag.v1 import cachepool_pb2, common_pb2

log = logging.getLogger(__name__)

RETRIEVAL_SECONDS = Histogram(
    "cag_fallback_retrieval_seconds",
    "Finding a fallback question's evidence: embedding the query, the nearest chunks, their order",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)


@dataclass(frozen=True, kw_only=True)
class Question:
    reader: Reader
    query: str
    sampling: common_pb2.SamplingParams
    route: str  # the route that was tried, "" when none matched
    reason: str  # why fallback answers
    request_id: str


class Answerer:
    def __init__(
        self,
        index: ChunkIndex,
        embedder: Embeds,
        order: EvidenceOrder,
        pool: AsyncCachePoolClient,
        broker: NatsBroker | None,
        *,
        layout_json: str,
        top_k: int,
        reindexing: Reindexing | None = None,
        reindex_wait_s: float = 30.0,
    ) -> None:
        self.index, self.embedder, self.order, self.pool, self.broker = index, embedder, order, pool, broker
        self.layout_json = layout_json
        self.top_k = top_k
        self.reindexing = reindexing or Reindexing()
        self.reindex_wait_s = reindex_wait_s

    async def answer(self, question: Question, timeout_s: float | None) -> AsyncIterator[common_pb2.GenerateResponse]:
        arrived = time.perf_counter()
        evidence = await self.evidence(question.reader, question.query)
        RETRIEVAL_SECONDS.observe(time.perf_counter() - arrived)
        request = cachepool_pb2.EvidenceGenerateRequest(
            tenant_id=question.reader.tenant_id,
            layout=self.layout_json,
            evidence=[cachepool_pb2.EvidencePassage(title=r.chunk.heading, text=r.chunk.text) for r in evidence],
            query=question.query,
            sampling=question.sampling,
        )
        answer: list[str] = []
        call = self.pool.generate_from_evidence(request, timeout_s=timeout_s)
        try:
            async for response in call:
                if response.HasField("token"):
                    if not answer:
                        TTFT.labels(service="fallback", path="fallback").observe(time.perf_counter() - arrived)
                    answer.append(response.token.text)
                elif response.HasField("done"):
                    _name_evidence(response.done, evidence)
                yield response
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.UNAVAILABLE:
                raise UnavailableError(f"the cache pool cannot answer now: {e.details()}") from None
            raise
        finally:
            call.cancel()
        ids = [r.chunk.chunk_id for r in evidence]
        self.order.served(ids)
        await self._served(question, evidence, "".join(answer), time.perf_counter() - arrived)

    async def evidence(self, reader: Reader, query: str) -> list[Retrieved]:
        """The top-k chunks the reader may read, in the evidence order's order (the set is retrieval's). While a
        source of the reader's tenant (or a public one) is being reindexed, its new chunks are waited for."""
        if not await self.reindexing.settled((reader.tenant_id, PUBLIC_TENANT), self.reindex_wait_s):
            log.warning("answering %s from chunks still being reindexed", reader.tenant_id)
        [vector] = await embed(self.embedder, [query])
        retrieved = await self.index.nearest(reader, vector, self.top_k)
        if not retrieved:
            raise NoEvidenceError(
                f"no indexed knowledge is readable for tenant {reader.tenant_id!r}: index its sources first "
                "(FallbackService.Index, or publish a module of the source)"
            )
        by_id = {r.chunk.chunk_id: r for r in retrieved}
        return [by_id[i] for i in self.order.order([r.chunk.chunk_id for r in retrieved])]

    async def _served(self, question: Question, evidence: list[Retrieved], answer: str, latency_s: float) -> None:
        if self.broker is None:
            return
        event = FallbackServedV1(
            request_id=question.request_id,
            tenant_id=question.reader.tenant_id,
            query=question.query,
            route=question.route,
            reason=question.reason,
            evidence_ids=[r.chunk.chunk_id for r in evidence],
            source_uris=list(dict.fromkeys(r.chunk.source_uri for r in evidence)),
            answer=answer[:MAX_ANSWER],
            latency_s=latency_s,
        )
        try:
            await publish_event(self.broker, Envelope.wrap(event))
        except Exception:  # the answer was served; promotion misses one sample, which is logged
            log.exception("cag.fallback.served for request %s could not be published", question.request_id)


def _name_evidence(done: common_pb2.GenerateSummary, evidence: list[Retrieved]) -> None:
    done.path = common_pb2.ANSWER_PATH_FALLBACK
    done.evidence_ids.extend(r.chunk.chunk_id for r in evidence)
    done.evidence.extend(
        common_pb2.EvidenceChunk(
            chunk_id=r.chunk.chunk_id,
            source_uri=r.chunk.source_uri,
            path=r.chunk.path,
            char_start=r.chunk.start,
            char_end=r.chunk.end,
        )
        for r in evidence
    )
