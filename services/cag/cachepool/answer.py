"""One Generate request, from the chain's ids to the last token: resolve → render the query → load the chain
into the data tiers → wait for an engine slot → restore and decode, streamed → the summary."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

from cag.cachepool.core import Tier
from cag.cachepool.core.latency import LatencyWindow
from cag.cachepool.engine_stream import stream_tokens
from cag.cachepool.pool import BAD_COPY, CachePool, ChainModule
from cag.cachepool.prompts import PromptBook
from cag.cachepool.scheduler import Scheduler
from cag.engine import GenerateRequest, SamplingParams, TokenEvent
from cag.layout import PromptLayout
from cag.telemetry import current_trace_id, record_span, span
from cag.telemetry.metrics import TTFT


@dataclass(frozen=True, kw_only=True)
class Ask:
    module_ids: tuple[str, ...]  # root first
    query: str
    sampling: SamplingParams
    tenant_id: str
    route_priority: int  # >= 1
    route_confidence: float  # in [0, 1]; 0 when the router sent none


@dataclass(frozen=True, kw_only=True)
class EvidenceAsk:
    tenant_id: str
    layout_json: str
    passages: tuple[tuple[str, str], ...]  # (title, text) in prompt order
    query: str
    sampling: SamplingParams


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """Tokens decoded; `text` is what they add to the answer ("" while a character is incomplete)."""

    token_ids: tuple[int, ...]
    text: str
    index: int


@dataclass(frozen=True, kw_only=True)
class ServedModule:
    module_id: str
    version: int
    tier: Tier  # where its rows came from for this request (ENGINE: already resident)


@dataclass(frozen=True, kw_only=True)
class Summary:
    modules: tuple[ServedModule, ...]
    finish_reason: str  # "stop" | "length" (cag.engine.FinishReason)
    tokens: int
    prefill_tokens: int
    cached_tokens: int
    ttft_s: float  # from the request's arrival at the pool
    total_s: float
    queue_s: float
    restore_s: float
    prefill_s: float
    decode_s: float
    trace_id: str = ""


def _record_engine_spans(last: TokenEvent, first_at: float, suffix_tokens: int) -> None:
    """The engine's prefill and decode as spans of this request's trace (the engine timed them on its thread)."""
    t = last.timings
    first_token = time.time() - (time.perf_counter() - first_at)  # the first token's wall-clock instant
    record_span(
        "cachepool.prefill", first_token - t.prefill_s, first_token, tokens=suffix_tokens,
        restored_tokens=t.restored_tokens, reused_tokens=t.reused_tokens, restore_ms=t.restore_s * 1e3,
    )  # fmt: skip
    record_span("cachepool.decode", first_token, first_token + t.decode_s, tokens=last.index + 1)


class Answerer:
    def __init__(self, pool: CachePool, scheduler: Scheduler, prompts: PromptBook, executor: Executor) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self.prompts = prompts
        self._executor = executor
        # Recent times to first token (perf_counter clock), for Stats; the histogram keeps the long run.
        self.ttft = LatencyWindow()

    async def answer(self, ask: Ask, *, arrived: float) -> AsyncIterator[Chunk | Summary]:
        """Chunks, then the summary. `arrived`: perf_counter reading when the request reached the pool."""
        with span("cachepool.resolve", modules=len(ask.module_ids)):
            records = await self.pool.resolve(ask.module_ids, ask.tenant_id)
            suffix = self.prompts.suffix_tokens(records[-1], ask.query)
        # An answer ends at its first paragraph, as the module's golden questions were answered when it was
        # compiled: what is served is what was validated.
        stops = ask.sampling.stop_sequences | self.prompts.paragraph_ends(records[-1])
        sampling = dataclasses.replace(ask.sampling, stop_sequences=stops)
        with span("cachepool.load") as loading:
            chain = await self.pool.chain(records, ask.route_priority, ask.route_confidence)
            loading.set_attribute("tier", ",".join(m.found_in.name.lower() for m in chain))
        waiting_since = time.time()
        async with self.scheduler.slot(ask.tenant_id, weight=ask.route_priority) as queue_s:
            record_span("cachepool.schedule", waiting_since, time.time(), queue_ms=queue_s * 1e3)
            self.pool.enter_engine(chain)
            decoder = _Decoder(self.prompts.layout_of(records[-1]))
            first_at, last = 0.0, None
            try:
                async for event in self._tokens(chain, suffix, sampling):
                    first_at, last = first_at or time.perf_counter(), event
                    yield decoder.chunk(event)
            finally:
                self.pool.leave_engine(chain, last.timings.restore_s if last else None)
        assert last is not None  # an engine stream yields at least one token
        _record_engine_spans(last, first_at, len(suffix))
        TTFT.labels(service="cachepool", path="module").observe(first_at - arrived)
        self.ttft.record(first_at - arrived, now=first_at)
        summary = _summary(chain, last, len(suffix), queue_s=queue_s, ttft_s=first_at - arrived, arrived=arrived)
        yield dataclasses.replace(summary, trace_id=current_trace_id())

    async def answer_evidence(self, ask: EvidenceAsk, *, arrived: float) -> AsyncIterator[Chunk | Summary]:
        """Chunks, then the summary, of an answer from evidence: the whole prompt prefilled on an empty chain (an
        engine with prefix caching reuses what it holds of it)."""
        layout, prompt = self.prompts.evidence_tokens(ask.layout_json, ask.passages, ask.query)
        stops = ask.sampling.stop_sequences | layout.paragraph_break_sequences()
        sampling = dataclasses.replace(ask.sampling, stop_sequences=stops)
        async with self.scheduler.slot(ask.tenant_id, weight=1) as queue_s:
            decoder = _Decoder(layout)
            first_at, last = 0.0, None
            request = GenerateRequest(chain=[], suffix=prompt, sampling=sampling)
            events = stream_tokens(self.pool.engine, request, self._executor)
            try:
                async for event in events:
                    first_at, last = first_at or time.perf_counter(), event
                    yield decoder.chunk(event)
            finally:
                await events.aclose()
        assert last is not None  # an engine stream yields at least one token
        TTFT.labels(service="cachepool", path="fallback").observe(first_at - arrived)
        summary = _summary([], last, len(prompt), queue_s=queue_s, ttft_s=first_at - arrived, arrived=arrived)
        yield dataclasses.replace(summary, trace_id=current_trace_id())

    async def _tokens(
        self, chain: list[ChainModule], suffix: list[int], sampling: SamplingParams
    ) -> AsyncIterator[TokenEvent]:
        """The engine's stream; when a copy fails verification as the engine restores it (before any token), once
        more from the modules' origin files (the pool discarded the copy and quarantined the module)."""
        for attempt in (1, 2):
            request = GenerateRequest(chain=[m.source for m in chain], suffix=suffix, sampling=sampling)
            events = stream_tokens(self.pool.engine, request, self._executor)
            try:
                first = await anext(events)
            except BAD_COPY as e:
                await events.aclose()
                if attempt == 1 and await self.pool.recover(chain, e):
                    continue
                raise
            try:
                yield first
                async for event in events:
                    yield event
            finally:
                await events.aclose()
            return


def _summary(
    chain: list[ChainModule], last: TokenEvent, prefill_tokens: int, *, queue_s: float, ttft_s: float, arrived: float
) -> Summary:
    timings = last.timings
    served = (ServedModule(module_id=m.record.module_id, version=m.record.version, tier=m.found_in) for m in chain)
    return Summary(
        modules=tuple(served),
        finish_reason=str(last.finish_reason or "length"),
        tokens=last.index + 1,
        prefill_tokens=prefill_tokens,
        cached_tokens=timings.restored_tokens + timings.reused_tokens,
        ttft_s=ttft_s,
        total_s=time.perf_counter() - arrived,
        queue_s=queue_s,
        restore_s=timings.restore_s,
        prefill_s=timings.prefill_s,
        decode_s=timings.decode_s,
    )


class _Decoder:
    """Token ids to answer text, incrementally: a chunk's text is what its token adds to the decoded answer."""

    def __init__(self, layout: PromptLayout) -> None:
        self._layout = layout
        self._ids: list[int] = []
        self._shown = ""

    def chunk(self, event: TokenEvent) -> Chunk:
        self._ids.append(event.token_id)
        text = self._layout.decode(self._ids)
        # An incomplete UTF-8 sequence decodes to U+FFFD: hold it back until the character is whole.
        added = "" if text.endswith("\ufffd") else text[len(self._shown) :]
        if added:
            self._shown = text
        return Chunk(token_ids=(event.token_id,), text=added, index=event.index)
