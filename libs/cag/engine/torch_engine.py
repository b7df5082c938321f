"""The torch reference engine: our Llama forward pass over preallocated token-major KV buffers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property

import torch

from cag.engine.cache import KVCache, KVShape, PendingRestore
from cag.engine.llama import LlamaModel
from cag.engine.sampling import SamplingParams, TokenSampler
from cag.errors import ContextWindowExceededError
from cag.kvmodule.chain import EngineIdentity, KVSource, order_chain
from cag.kvmodule.metadata import DTYPES
from cag.models import ModelFiles

ProgressCallback = Callable[[int], None]
KV_FORMAT = "kv=token-major"


class TorchEngine:
    def __init__(self, model: ModelFiles, dtype: str = "fp32") -> None:
        self.model_files = model
        self.dtype_name = dtype
        self.model = LlamaModel.load(model.path, DTYPES[dtype])
        self.eos_token_id = int(str(model.config.get("eos_token_id", -1)))

    @cached_property
    def identity(self) -> EngineIdentity:
        c = self.model.config
        # What makes KV reusable: architecture shape, RoPE scheme and KV layout, not the implementation.
        fingerprint = ";".join(
            [
                "llama",
                f"layers={c.layers}",
                f"heads={c.heads}",
                f"kv_heads={c.kv_heads}",
                f"head_dim={c.head_dim}",
                c.rope_fingerprint,
                "attn=causal-gqa",
                KV_FORMAT,
            ]
        )
        return EngineIdentity(
            model_name=self.model_files.name,
            model_revision=self.model_files.model_revision,
            tokenizer_revision=self.model_files.tokenizer_revision,
            engine_fingerprint=fingerprint,
            dtype=self.dtype_name,
        )

    @property
    def kv_shape(self) -> KVShape:
        return self.model.kv_shape

    @property
    def context_window(self) -> int:
        return self.model.config.max_positions

    def _new_cache(self, tokens: int) -> KVCache:
        if tokens > self.context_window:
            raise ContextWindowExceededError(
                f"{tokens} tokens do not fit the context window of {self.context_window} tokens"
            )
        return KVCache(self.kv_shape, tokens)

    def new_cache(self, capacity: int) -> KVCache:
        cache = self._new_cache(capacity)
        # Touch every page now, so a request never pays the page faults of fresh buffers.
        cache.k.zero_()
        cache.v.zero_()
        return cache

    def prefill(
        self,
        tokens: Sequence[int],
        past: KVCache | None = None,
        *,
        reserve: int = 0,
        chunk_size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> KVCache:
        cache = past if past is not None else self._new_cache(len(tokens) + reserve)
        ids = torch.tensor(list(tokens), dtype=torch.long)
        step = chunk_size or max(1, len(ids))
        for begin in range(0, len(ids), step):
            chunk = ids[begin : begin + step]
            self.model.forward(chunk, cache)
            if on_progress is not None:
                on_progress(len(chunk))
        return cache

    def restore(
        self, chain: Sequence[KVSource], *, reserve: int, into: KVCache | None = None, overlap: bool = False
    ) -> KVCache:
        ordered = order_chain(chain)
        for module in ordered:
            self.identity.check(module.metadata)
        needed = sum(m.token_count for m in ordered) + reserve
        if into is not None and into.capacity >= needed and into.shape == self.kv_shape:
            into.truncate(0)
            cache = into
        else:
            cache = self._new_cache(needed)
        starts = [sum(m.token_count for m in ordered[:i]) for i in range(len(ordered))]
        cache.length = starts[-1] + ordered[-1].token_count
        if not overlap:
            for module, start in zip(ordered, starts, strict=True):
                module.write_into(cache, start)
            return cache
        pending = PendingRestore(self.kv_shape.layers, len(ordered))
        cache.pending = pending
        threading.Thread(target=_fill, args=(ordered, starts, cache, pending), daemon=True, name="kv-restore").start()
        return cache

    def generate(self, suffix: Sequence[int], cache: KVCache, sampling: SamplingParams) -> Iterator[int]:
        sample = TokenSampler(sampling)
        generated: list[int] = []
        logits = self.model.forward(torch.tensor(list(suffix), dtype=torch.long), cache)
        for _ in range(sampling.max_new_tokens):
            token = sample(logits)
            generated.append(token)
            yield token
            if token == self.eos_token_id or sampling.ends_answer(generated) or cache.length >= cache.capacity:
                return
            logits = self.model.forward(torch.tensor([token]), cache)


def _fill(chain: Sequence[KVSource], starts: list[int], cache: KVCache, pending: PendingRestore) -> None:
    """The background half of an overlapped restore: every module's rows, then the verdict."""
    try:
        for module, start in zip(chain, starts, strict=True):
            module.write_into(cache, start, on_layer=pending.layer_loaded)
    except BaseException as e:  # handed to the forward pass that waits on it
        pending.finish(e)
    else:
        pending.finish()
