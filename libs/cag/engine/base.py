"""The Engine protocol, its request and event types, and the registry of engines (imported lazily by name).

An engine owns its KV memory. A request names the module chain (KV sources), the suffix tokens and
the sampling; the engine restores the chain where it wants it (or uses what it already holds, shared
with every other request on it), prefills the suffix, decodes and streams tokens. Many requests may
run at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from cag.engine.cache import KVShape
from cag.engine.sampling import SamplingParams
from cag.errors import InvalidFieldError, UnknownEngineError

if TYPE_CHECKING:
    import torch

    from cag.kvmodule.chain import EngineIdentity, KVSource
    from cag.models import ModelFiles

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    """One answer: the chain's K/V (any order, root first after ordering), then `suffix`, then decoding.

    An empty chain is a plain prompt: the suffix is all there is (the full-prefill baseline).
    """

    chain: Sequence[KVSource]
    suffix: Sequence[int]
    sampling: SamplingParams

    def __post_init__(self) -> None:
        # Frozen in content too: the caller's lists are copied.
        object.__setattr__(self, "chain", tuple(self.chain))
        object.__setattr__(self, "suffix", tuple(self.suffix))
        if not self.suffix:
            raise InvalidFieldError("suffix", "must hold at least one token: the first answer token follows it")


class FinishReason(StrEnum):
    STOP = "stop"  # end of sequence, a stop token or a stop sequence
    LENGTH = "length"  # max_new_tokens reached, or the engine's KV memory is full


@dataclass(frozen=True, kw_only=True)
class RequestTimings:
    """Seconds, measured by the engine from the moment the request started running.

    A restore read from disk overlaps the suffix's prefill: then `prefill_s` includes waiting for the
    rows (and their checksum) the prefill attends over, and `restore_s` runs alongside it.
    """

    restore_s: float  # the restores this request waited for, checksums included (0 when all were resident)
    prefill_s: float  # the suffix's forward pass, up to the first logits
    ttft_s: float  # request start to the first token
    decode_s: float  # first token to this one
    restored_tokens: int  # chain tokens that were not resident when the request arrived
    reused_tokens: int  # chain tokens the engine already held, verified


@dataclass(frozen=True, kw_only=True)
class TokenEvent:
    """One generated token; the last event of a stream carries its finish reason."""

    token_id: int
    index: int  # 0 for the first generated token
    finish_reason: FinishReason | None
    timings: RequestTimings  # so far: the last event's are the request's
    logprobs: tuple[tuple[int, float], ...] = ()  # (token id, log-prob), most likely first; see SamplingParams


@dataclass(frozen=True, kw_only=True)
class ModuleRows:
    """A new module's K/V, owned by the caller: k, v are [layers, tokens, kv_heads, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def token_count(self) -> int:
        return int(self.k.shape[1])


class Engine(Protocol):
    """Keeps module chains resident in KV memory it owns and answers any number of requests on top of them.

    Resident modules are shared: every request on a module attends over its one copy of the rows and writes
    only rows of its own. Memory is counted in tokens (`kv_capacity`): resident modules plus the rows
    running requests reserved. The engine never evicts on its own; its owner drops modules to make room.
    """

    @property
    def identity(self) -> EngineIdentity: ...

    @property
    def kv_shape(self) -> KVShape: ...

    @property
    def context_window(self) -> int: ...

    @property
    def reuse_block_size(self) -> int:
        """Residency comes in blocks of this many tokens: a resident chain's last partial block is restored again
        by each request on it (1: chains stay resident whole)."""
        ...

    @property
    def kv_capacity(self) -> int:
        """Tokens the engine's KV memory holds; a request or load that cannot fit raises KVCacheFullError."""
        ...

    @property
    def kv_tokens_free(self) -> int:
        """Tokens neither resident modules nor running requests hold now."""
        ...

    def generate(self, request: GenerateRequest) -> Iterator[TokenEvent]:
        """Use (or restore) the chain, prefill the suffix, decode; yields tokens as they come.

        Thread-safe: streams may be open and advanced concurrently from different threads. Modules not
        resident are restored once (requests needing one meanwhile share its restore) and stay resident.
        No token leaves before every row it depends on is verified: a source that fails its checksum ends
        the stream with ModuleCorruptedError before the first event, and the module does not stay. Errors
        are raised when the stream is first advanced; closing a stream early frees its rows at once.
        """
        ...

    def prefill_module(
        self,
        chain: Sequence[KVSource],
        tokens: Sequence[int],
        *,
        chunk_size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ModuleRows:
        """Compute the K/V of `tokens` on top of `chain` (restored or resident) and return those rows.

        With `chunk_size` the tokens go through in chunks and `on_progress` hears each chunk's size.
        The chain stays resident, so requests on top of it that follow use it in place.
        """
        ...

    def load(self, chain: Sequence[KVSource]) -> None:
        """Make every module of the chain resident and verified, without answering anything (a prefetch)."""
        ...

    def drop(self, module_id: str) -> bool:
        """Forget a resident module (True when it was); requests already running on it finish normally."""
        ...

    def resident(self) -> dict[str, int]:
        """Module id → tokens, for every module resident and verified now."""
        ...

    def evict(self) -> None:
        """Drop every resident module: the next request restores its whole chain."""
        ...

    def close(self) -> None:
        """Stop serving and release what the engine holds beyond its memory (threads, runtimes)."""
        ...


_ENGINES = {"torch": "cag.engine.torch_engine:TorchEngine", "vllm": "cag.engine.vllm_engine:VLLMEngine"}


def engine_kinds() -> list[str]:
    return sorted(_ENGINES)


def load_engine(kind: str, model: ModelFiles, dtype: str, *, kv_capacity: int | None = None) -> Engine:
    """Build an engine by name; implementations are imported only when asked for.

    `kv_capacity`: tokens of KV memory the engine owns (default: the model's context window).
    """
    try:
        module_name, _, cls_name = _ENGINES[kind].partition(":")
    except KeyError:
        raise UnknownEngineError(f"unknown engine {kind!r}; known: {', '.join(engine_kinds())}") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    engine: Engine = cls(model, dtype, kv_capacity=kv_capacity)
    return engine
