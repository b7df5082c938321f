"""The torch reference engine: our Llama forward pass over KV memory the engine owns.

Each resident module's rows sit once in engine memory, at the positions its chain gives them; every request
attends over them in place and writes only rows of its own (its suffix and answer), so concurrent requests on
one module share it and a request on a resident module copies nothing. A module a request needs and the
engine lacks is restored once (requests needing it meanwhile wait on that restore), overlapped with the
suffix's forward pass layer by layer when read from disk, and stays resident until the caller drops it.
Streams are independent: any number may be open and advanced from different threads.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from functools import cached_property

import torch

from cag.engine.base import FinishReason, GenerateRequest, ModuleRows, ProgressCallback, RequestTimings, TokenEvent
from cag.engine.cache import KVCache, KVShape
from cag.engine.identity import checked_chain, engine_identity
from cag.engine.llama import LlamaModel, PrefixRows
from cag.engine.resident import Placement, ResidentSet
from cag.engine.sampling import SamplingParams, TokenSampler, top_logprobs
from cag.errors import InvalidFieldError, KVCacheFullError
from cag.kvmodule.chain import EngineIdentity, KVSource
from cag.kvmodule.metadata import DTYPES
from cag.models import ModelFiles


class TorchEngine:
    def __init__(self, model: ModelFiles, dtype: str = "fp32", *, kv_capacity: int | None = None) -> None:
        self.model_files = model
        self.dtype_name = dtype
        self.model = LlamaModel.load(model.path, DTYPES[dtype])
        self.eos_token_id = int(str(model.config.get("eos_token_id", -1)))
        capacity = self.context_window if kv_capacity is None else kv_capacity
        if capacity < 1:
            raise InvalidFieldError("kv_capacity", f"must be at least 1 token, not {capacity}")
        self._resident = ResidentSet(self.kv_shape, capacity)

    @cached_property
    def identity(self) -> EngineIdentity:
        return engine_identity(self.model_files, self.model.config, self.dtype_name, "torch")

    @property
    def kv_shape(self) -> KVShape:
        return self.model.kv_shape

    @property
    def context_window(self) -> int:
        return self.model.config.max_positions

    @property
    def reuse_block_size(self) -> int:
        return 1  # resident modules are kept whole

    @property
    def kv_capacity(self) -> int:
        return self._resident.capacity

    @property
    def kv_tokens_free(self) -> int:
        """Tokens of KV memory neither resident modules nor running requests hold now."""
        return self._resident.free

    # ------------------------------------------------------------ requests

    def generate(self, request: GenerateRequest) -> Iterator[TokenEvent]:
        started = time.perf_counter()
        chain = self._checked_chain(request.chain, extra=len(request.suffix))
        wanted = len(request.suffix) + request.sampling.max_new_tokens
        own = min(wanted, self.context_window - sum(m.token_count for m in chain))
        placed = self._place(chain, own, minimum=len(request.suffix) + 1)
        try:
            restore_threads = self._start_restores(placed)
            prefix = placed.rows()
            prefill_started = time.perf_counter()
            logits = self._forward(request.suffix, placed.own, prefix)  # waits for every row: only verified ones
            first_token_at = time.perf_counter()
            for thread in restore_threads:
                thread.join()
            timings = RequestTimings(
                restore_s=placed.restore_seconds(),
                prefill_s=first_token_at - prefill_started,
                ttft_s=first_token_at - started,
                decode_s=0.0,
                restored_tokens=placed.restored_tokens,
                reused_tokens=placed.reused_tokens,
            )
            yield from self._decode(logits, request.sampling, timings, first_token_at, placed.own, prefix)
        finally:
            self._resident.release(placed)

    def _decode(
        self,
        logits: torch.Tensor,
        sampling: SamplingParams,
        timings: RequestTimings,
        since: float,
        memory: KVCache,
        prefix: list[PrefixRows],
    ) -> Iterator[TokenEvent]:
        """Sample, stream, extend: until a stop, max_new_tokens or the request's own rows are full."""
        sample = TokenSampler(sampling)
        generated: list[int] = []
        while True:
            token = sample(logits)  # logits: [vocab]
            generated.append(token)
            finish = self._finish_reason(generated, sampling, memory)
            now = time.perf_counter()
            yield TokenEvent(
                token_id=token,
                index=len(generated) - 1,
                finish_reason=finish,
                timings=_with_decode(timings, now - since),
                logprobs=top_logprobs(logits, sampling.logprobs),
            )
            if finish is not None:
                return
            logits = self._forward([token], memory, prefix)

    def _finish_reason(self, generated: list[int], sampling: SamplingParams, memory: KVCache) -> FinishReason | None:
        if generated[-1] == self.eos_token_id or sampling.ends_answer(generated):
            return FinishReason.STOP
        if len(generated) >= sampling.max_new_tokens or memory.length >= memory.capacity:
            return FinishReason.LENGTH
        return None

    def prefill_module(
        self,
        chain: Sequence[KVSource],
        tokens: Sequence[int],
        *,
        chunk_size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ModuleRows:
        ordered = self._checked_chain(chain, extra=len(tokens))
        placed = self._place(ordered, len(tokens), minimum=len(tokens))
        try:
            for thread in self._start_restores(placed):
                thread.join()
            prefix = placed.rows()
            step = chunk_size or max(1, len(tokens))
            for begin in range(0, len(tokens), step):
                chunk = tokens[begin : begin + step]
                self._forward(chunk, placed.own, prefix)
                if on_progress is not None:
                    on_progress(len(chunk))
            # The caller's copy: these rows return to the engine's memory when this call ends.
            return ModuleRows(k=placed.own.k.clone(), v=placed.own.v.clone())
        finally:
            self._resident.release(placed)

    def load(self, chain: Sequence[KVSource]) -> None:
        ordered = self._checked_chain(chain, extra=0)
        placed = self._place(ordered, 0, minimum=0)
        try:
            for thread in self._start_restores(placed):
                thread.join()
            for module in placed.modules:  # restores other requests started: wait for their verdict too
                if module.pending is not None:
                    module.pending.wait_done()
        finally:
            self._resident.release(placed)

    def drop(self, module_id: str) -> bool:
        return self._resident.drop(module_id)

    def resident(self) -> dict[str, int]:
        return self._resident.ready()

    def evict(self) -> None:
        self._resident.clear()

    def close(self) -> None:
        return  # nothing but memory, which goes with the engine

    # ------------------------------------------------------------ steps

    def _checked_chain(self, chain: Sequence[KVSource], *, extra: int) -> list[KVSource]:
        return checked_chain(self.identity, self.context_window, chain, extra=extra)

    def _place(self, chain: list[KVSource], own: int, *, minimum: int) -> Placement:
        """The chain resident (or entering) and `own` rows for the request — fewer, down to `minimum`, when
        memory is short (the answer then ends with LENGTH). KVCacheFullError when not even that fits."""
        try:
            return self._resident.place(chain, own=own)
        except KVCacheFullError:
            if own <= minimum:
                raise
        # First fit puts the missing modules, then the request's rows, in the longest free run of an idle engine.
        missing = sum(m.token_count for m in chain if m.metadata.module_id not in self._resident.ready())
        fits = self._resident.largest_free - missing
        return self._resident.place(chain, own=max(minimum, min(own, fits)))

    def _start_restores(self, placed: Placement) -> list[threading.Thread]:
        """Run this request's restores in the background: its forward pass consumes rows as they land."""
        threads = [threading.Thread(target=job, daemon=True, name="kv-restore") for job in placed.restores]
        for thread in threads:
            thread.start()
        return threads

    def _forward(self, tokens: Sequence[int], memory: KVCache, prefix: list[PrefixRows]) -> torch.Tensor:
        """Append tokens to the request's own rows; logits of the last one: [vocab]."""
        return self.model.forward(torch.tensor(list(tokens), dtype=torch.long), memory, prefix)


def _with_decode(timings: RequestTimings, decode_s: float) -> RequestTimings:
    return dataclasses.replace(timings, decode_s=decode_s)
