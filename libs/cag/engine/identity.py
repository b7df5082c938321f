"""An engine's identity: what its KV rows are, and which other engines' modules it serves.

The fingerprint names what makes KV reusable (architecture shape, RoPE scheme, KV layout) and the engine that
computed the rows: two engines running the same model differ in kernels and summation order, so their rows
differ in rounding. A module built by one engine is served by another only when the pair is declared in
`COMPATIBLE_ENGINES`, and each declaration is proven by a test that serves one engine's modules with the other
and compares greedy answers with the other's full prefill (tests/integration/vllm/test_engine_compat.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from cag.engine.llama import LlamaConfig
from cag.errors import ContextWindowExceededError
from cag.kvmodule.chain import EngineIdentity, S, order_chain
from cag.models import ModelFiles

KV_FORMAT = "kv=token-major"

# Pairs of engines whose modules are interchangeable (each proven by a test, see above).
COMPATIBLE_ENGINES: frozenset[frozenset[str]] = frozenset({frozenset({"torch", "vllm"})})


def kv_fingerprint(config: LlamaConfig, engine: str) -> str:
    return ";".join(
        [
            "llama",
            f"layers={config.layers}",
            f"heads={config.heads}",
            f"kv_heads={config.kv_heads}",
            f"head_dim={config.head_dim}",
            config.rope_fingerprint,
            "attn=causal-gqa",
            KV_FORMAT,
            f"engine={engine}",
        ]
    )


def engine_identity(model: ModelFiles, config: LlamaConfig, dtype: str, engine: str) -> EngineIdentity:
    """The identity of `engine` serving `model` at `dtype`; it also accepts the modules of declared partners."""
    partners = sorted(other for pair in COMPATIBLE_ENGINES if engine in pair for other in pair if other != engine)
    return EngineIdentity(
        model_name=model.name,
        model_revision=model.model_revision,
        tokenizer_revision=model.tokenizer_revision,
        engine_fingerprint=kv_fingerprint(config, engine),
        dtype=dtype,
        also_accepts=frozenset(kv_fingerprint(config, other) for other in partners),
    )


def checked_chain(identity: EngineIdentity, context_window: int, chain: Sequence[S], *, extra: int) -> list[S]:
    """The chain root first, refused unless it was built for this engine and fits the context window with
    `extra` more tokens."""
    ordered = order_chain(chain) if chain else []
    for module in ordered:
        identity.check(module.metadata)
    needed = sum(m.token_count for m in ordered) + extra
    if needed > context_window:
        raise ContextWindowExceededError(f"{needed} tokens do not fit the context window of {context_window} tokens")
    return ordered
