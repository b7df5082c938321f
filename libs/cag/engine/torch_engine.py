"""The torch reference engine: our Llama forward pass over KV buffers the engine preallocates and owns.

One token-major buffer ([layers, capacity, kv_heads, head_dim] for K and for V) holds, from row 0,
the module chain of the last request and then that request's suffix and answer. A request whose
chain starts with the resident modules reuses their rows and restores only the rest; a restore
from disk reads each layer's rows straight into the buffer while the suffix's forward pass runs,
and each layer's attention waits only for that layer's rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from cag.engine.base import FinishReason, GenerateRequest, ModuleRows, ProgressCallback, RequestTimings, TokenEvent
from cag.engine.cache import KVCache, KVShape, PendingRestore
from cag.engine.llama import LlamaModel
from cag.engine.sampling import SamplingParams, TokenSampler, top_logprobs
from cag.errors import ContextWindowExceededError, InvalidFieldError, KVCacheFullError
from cag.kvmodule.chain import EngineIdentity, KVSource, order_chain
from cag.kvmodule.metadata import DTYPES
from cag.models import ModelFiles

KV_FORMAT = "kv=token-major"
ModuleKey = tuple[str, str, str]  # module id, chain hash, tensor checksum: the rows' content


def module_key(source: KVSource) -> ModuleKey:
    meta = source.metadata
    return meta.module_id, meta.chain_hash, meta.tensor_checksum


@dataclass(frozen=True, kw_only=True)
class Placement:
    """How a chain came to sit in rows [0, tokens): what was reused, what is (still) being restored."""

    chain: tuple[ModuleKey, ...]
    reused_tokens: int
    restored_tokens: int
    restore_s: float  # a serial restore's time; an overlapped one reports through `pending`
    pending: PendingRestore | None

    def restore_seconds(self) -> float:
        return self.pending.seconds if self.pending is not None else self.restore_s


class SupersededError(RuntimeError):
    """A stream advanced after a newer request took the engine's KV memory (a caller's bug)."""


class TorchEngine:
    def __init__(self, model: ModelFiles, dtype: str = "fp32", *, kv_capacity: int | None = None) -> None:
        self.model_files = model
        self.dtype_name = dtype
        self.model = LlamaModel.load(model.path, DTYPES[dtype])
        self.eos_token_id = int(str(model.config.get("eos_token_id", -1)))
        capacity = self.context_window if kv_capacity is None else kv_capacity
        if not 1 <= capacity <= self.context_window:
            raise InvalidFieldError("kv_capacity", f"must be in [1, {self.context_window}], not {capacity}")
        self._capacity = capacity
        self._memory: KVCache | None = None  # allocated on first use
        self._resident: tuple[ModuleKey, ...] = ()  # the verified chain in rows [0, n), root first
        self._request = 0  # number of the request that owns the memory; older streams are superseded

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

    @property
    def kv_capacity(self) -> int:
        return self._capacity

    # ------------------------------------------------------------ requests

    def generate(self, request: GenerateRequest) -> Iterator[TokenEvent]:
        started = time.perf_counter()
        ticket = self._begin()
        chain = self._checked_chain(request.chain, extra=len(request.suffix))
        placement = self._place(chain, overlap=not all(m.in_memory for m in chain))
        prefill_started = time.perf_counter()
        logits = self._forward(request.suffix)  # waits for the restore: only verified rows give logits
        self._resident = placement.chain
        first_token_at = time.perf_counter()
        timings = RequestTimings(
            restore_s=placement.restore_seconds(),
            prefill_s=first_token_at - prefill_started,
            ttft_s=first_token_at - started,
            decode_s=0.0,
            restored_tokens=placement.restored_tokens,
            reused_tokens=placement.reused_tokens,
        )
        yield from self._decode(logits, request.sampling, timings, first_token_at, ticket)

    def _decode(
        self, logits: torch.Tensor, sampling: SamplingParams, timings: RequestTimings, since: float, ticket: int
    ) -> Iterator[TokenEvent]:
        """Sample, stream, extend: until a stop, max_new_tokens or a full KV memory."""
        sample = TokenSampler(sampling)
        generated: list[int] = []
        while True:
            token = sample(logits)  # logits: [vocab]
            generated.append(token)
            finish = self._finish_reason(generated, sampling)
            now = time.perf_counter()
            yield TokenEvent(
                token_id=token,
                index=len(generated) - 1,
                finish_reason=finish,
                timings=dataclasses.replace(timings, decode_s=now - since),
                logprobs=top_logprobs(logits, sampling.logprobs),
            )
            if finish is not None:
                return
            self._check_current(ticket)
            logits = self._forward([token])

    def _finish_reason(self, generated: list[int], sampling: SamplingParams) -> FinishReason | None:
        if generated[-1] == self.eos_token_id or sampling.ends_answer(generated):
            return FinishReason.STOP
        if len(generated) >= sampling.max_new_tokens or self._cache().length >= self._capacity:
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
        self._begin()
        ordered = self._checked_chain(chain, extra=len(tokens))
        placement = self._place(ordered, overlap=False)
        self._resident = placement.chain
        start = self._cache().length
        step = chunk_size or max(1, len(tokens))
        for begin in range(0, len(tokens), step):
            chunk = tokens[begin : begin + step]
            self._forward(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
        k, v = self._cache().rows(start, start + len(tokens))  # [layers, tokens, kv_heads, head_dim] views
        # The caller's copy: the engine's rows belong to whichever request comes next.
        return ModuleRows(k=k.clone(), v=v.clone())

    def evict(self) -> None:
        self._begin()
        self._resident = ()

    # ------------------------------------------------------------ steps

    def _begin(self) -> int:
        """Take the KV memory for a new request: older streams are superseded, their restores drained."""
        self._request += 1
        memory = self._memory
        if memory is not None and memory.pending is not None:
            # A restore left running by an abandoned stream: its error (if any) was that stream's.
            with contextlib.suppress(Exception):
                memory.settle()
        return self._request

    def _check_current(self, ticket: int) -> None:
        if ticket != self._request:
            raise SupersededError("a newer request took this engine's KV memory; this stream cannot go on")

    def _cache(self) -> KVCache:
        if self._memory is None:
            memory = KVCache(self.kv_shape, self._capacity)
            # Touch every page now, so no request pays the page faults of fresh buffers.
            memory.k.zero_()
            memory.v.zero_()
            self._memory = memory
        return self._memory

    def _checked_chain(self, chain: Sequence[KVSource], *, extra: int) -> list[KVSource]:
        """The chain root first, refused unless it was built for this engine and fits with `extra` tokens."""
        ordered = order_chain(chain) if chain else []
        for module in ordered:
            self.identity.check(module.metadata)
        needed = sum(m.token_count for m in ordered) + extra
        if needed > self.context_window:
            raise ContextWindowExceededError(
                f"{needed} tokens do not fit the context window of {self.context_window} tokens"
            )
        if needed > self._capacity:
            raise KVCacheFullError(f"KV cache full: {needed} tokens needed, the engine holds {self._capacity}")
        return ordered

    def _place(self, chain: list[KVSource], *, overlap: bool) -> Placement:
        """Put the chain in rows [0, n): keep the resident modules it starts with, restore the rest.

        With `overlap`, rows arrive in the background and the next forward pass consumes them layer
        by layer as they land (it waits for verification before producing logits).
        """
        keys = tuple(module_key(m) for m in chain)
        kept = _common_prefix(self._resident, keys)
        reused = sum(m.token_count for m in chain[:kept])
        cache = self._cache()
        cache.truncate(reused)
        self._resident = self._resident[:kept]  # the rows after them are about to be overwritten
        rest = chain[kept:]
        starts = [reused + sum(m.token_count for m in rest[:i]) for i in range(len(rest))]
        cache.length = reused + sum(m.token_count for m in rest)
        restored = cache.length - reused
        if not rest or not overlap:
            began = time.perf_counter()
            _restore(rest, starts, cache)
            return Placement(
                chain=keys,
                reused_tokens=reused,
                restored_tokens=restored,
                restore_s=time.perf_counter() - began,
                pending=None,
            )
        pending = PendingRestore(self.kv_shape.layers, len(rest))
        cache.pending = pending
        threading.Thread(target=_fill, args=(rest, starts, cache, pending), daemon=True, name="kv-restore").start()
        return Placement(chain=keys, reused_tokens=reused, restored_tokens=restored, restore_s=0.0, pending=pending)

    def _forward(self, tokens: Sequence[int]) -> torch.Tensor:
        """Append tokens to the KV memory; logits of the last one: [vocab]."""
        return self.model.forward(torch.tensor(list(tokens), dtype=torch.long), self._cache())


def _common_prefix(resident: tuple[ModuleKey, ...], wanted: tuple[ModuleKey, ...]) -> int:
    kept = 0
    while kept < min(len(resident), len(wanted)) and resident[kept] == wanted[kept]:
        kept += 1
    return kept


def _restore(chain: Sequence[KVSource], starts: list[int], cache: KVCache) -> None:
    """Every module's rows into its row range; returns once all of them verified."""
    for module, start in zip(chain, starts, strict=True):
        for _ in module.read_rows(into=cache.rows_target(start, module.token_count)):
            pass


def _fill(chain: Sequence[KVSource], starts: list[int], cache: KVCache, pending: PendingRestore) -> None:
    """The background half of an overlapped restore: every module's rows, layer by layer, then the verdict."""
    try:
        for module, start in zip(chain, starts, strict=True):
            for rows in module.read_rows(into=cache.rows_target(start, module.token_count)):
                pending.layer_loaded(rows.layer)
    except BaseException as e:  # handed to the forward pass that waits on it
        pending.finish(e)
    else:
        pending.finish()
