"""A Llama forward pass over token-major preallocated KV buffers (the torch reference model).

Written as short steps in the style of gpt-fast so the KV layout is ours: the
cache rows a prefill writes are exactly the rows a KV module stores, and
restoring a module is a copy into those rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cag.engine.cache import KVCache, KVShape, PendingRestore
from cag.errors import UnknownModelError


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_positions: int
    tie_word_embeddings: bool

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    @property
    def rope_fingerprint(self) -> str:
        return f"rope=default:theta={self.rope_theta:g}:dim={self.head_dim}"

    @classmethod
    def from_hf(cls, config: dict[str, object]) -> LlamaConfig:
        if config.get("model_type") != "llama":
            raise UnknownModelError(f"model_type {config.get('model_type')!r} is not supported (llama only)")
        rope = config.get("rope_parameters") or {"rope_type": "default", "rope_theta": config.get("rope_theta")}
        assert isinstance(rope, dict)
        if rope.get("rope_type", "default") != "default" or config.get("attention_bias") or config.get("mlp_bias"):
            raise UnknownModelError("only plain Llama (default RoPE, no biases) is supported by the torch engine")
        hidden = _int(config, "hidden_size")
        heads = _int(config, "num_attention_heads")
        return cls(
            vocab_size=_int(config, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_int(config, "intermediate_size"),
            layers=_int(config, "num_hidden_layers"),
            heads=heads,
            kv_heads=_int(config, "num_key_value_heads"),
            head_dim=int(str(config.get("head_dim") or hidden // heads)),
            rope_theta=float(str(rope["rope_theta"])),
            rms_norm_eps=float(str(config["rms_norm_eps"])),
            max_positions=_int(config, "max_position_embeddings"),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


def _int(config: dict[str, object], key: str) -> int:
    return int(str(config[key]))


def _attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v and the log-sum-exp of each query row's scores: [B, H, L, D] and [B, H, L].

    The CPU flash attention kernel behind scaled_dot_product_attention, called directly because the public
    function drops the log-sum-exp that merging segments needs.
    """
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask)
    return out, lse


@dataclass(frozen=True, kw_only=True)
class PrefixRows:
    """A module's K/V resident in the engine, attended over in place: k, v are [layers, tokens, kv_heads, head_dim].

    `pending` is set while its rows are still being restored (each layer waits for its own rows).
    """

    k: torch.Tensor
    v: torch.Tensor
    pending: PendingRestore | None = None

    @property
    def tokens(self) -> int:
        return int(self.k.shape[1])


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: torch.Tensor  # [hidden]
    wqkv: torch.Tensor  # [(heads + 2*kv_heads) * head_dim, hidden]
    wo: torch.Tensor  # [hidden, heads * head_dim]
    mlp_norm: torch.Tensor  # [hidden]
    w_gate_up: torch.Tensor  # [2 * intermediate, hidden]
    w_down: torch.Tensor  # [hidden, intermediate]


class LlamaModel:
    """Weights plus the forward step; holds no per-request state."""

    def __init__(self, config: LlamaConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self.config = config
        self.dtype = dtype

        def w(name: str) -> torch.Tensor:
            return weights[name].to(dtype).contiguous()

        self.embed = w("model.embed_tokens.weight")  # [vocab, hidden]
        self.final_norm = w("model.norm.weight")
        self.lm_head = self.embed if config.tie_word_embeddings else w("lm_head.weight")
        self.layers = [self._layer(w, i) for i in range(config.layers)]
        inv_freq = 1.0 / (
            config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim)
        )
        angles = torch.outer(torch.arange(config.max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [positions, head_dim]
        self.cos = angles.cos().to(dtype)
        self.sin = angles.sin().to(dtype)

    @staticmethod
    def _layer(w: Callable[[str], torch.Tensor], i: int) -> LayerWeights:
        p = f"model.layers.{i}."
        return LayerWeights(
            attn_norm=w(p + "input_layernorm.weight"),
            wqkv=torch.cat([w(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
            wo=w(p + "self_attn.o_proj.weight"),
            mlp_norm=w(p + "post_attention_layernorm.weight"),
            w_gate_up=torch.cat([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")]),
            w_down=w(p + "mlp.down_proj.weight"),
        )

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype) -> LlamaModel:
        config = LlamaConfig.from_hf(json.loads((folder / "config.json").read_text()))
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted(folder.glob("*.safetensors")):
            weights.update(load_file(shard))
        return cls(config, weights, dtype)

    @property
    def kv_shape(self) -> KVShape:
        c = self.config
        return KVShape(layers=c.layers, kv_heads=c.kv_heads, head_dim=c.head_dim, dtype=self.dtype)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return weight * xf.to(self.dtype)

    def _rope(self, x: torch.Tensor, start: int) -> torch.Tensor:
        # x: [S, n_heads, head_dim]
        s, half = x.shape[0], x.shape[-1] // 2
        cos = self.cos[start : start + s, None, :]  # [S, 1, D]
        sin = self.sin[start : start + s, None, :]
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _extension_mask(self, start: int, s: int) -> torch.Tensor | None:
        """Additive causal mask for S new tokens after `start` cached ones, tiled for the stacked GQA
        query rows: [group*S, start+S]; None when a single token needs none. Built once per forward."""
        if s == 1:
            return None
        end = start + s
        future = torch.arange(end)[None, :] > torch.arange(start, end)[:, None]  # [S, N]
        # An additive float mask takes a faster SDPA path on CPU than a boolean one.
        mask = torch.zeros(s, end, dtype=self.dtype).masked_fill_(future, float("-inf"))
        return mask.repeat(self.config.group_size, 1)

    def _attention(
        self,
        layer: int,
        x: torch.Tensor,
        cache: KVCache,
        prefix: Sequence[PrefixRows],
        position: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        c, lw = self.config, self.layers[layer]
        s, start = x.shape[0], cache.length
        sizes = [c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim]
        q, k, v = torch.split(F.linear(x, lw.wqkv), sizes, dim=-1)
        q = self._rope(q.view(s, c.heads, c.head_dim), position)  # [S, H, D]
        cache.k[layer, start : start + s] = self._rope(k.view(s, c.kv_heads, c.head_dim), position)
        cache.v[layer, start : start + s] = v.view(s, c.kv_heads, c.head_dim)
        end = start + s
        keys = cache.k[layer, :end].transpose(0, 1)  # [KV, N, D], a strided view, no copy
        values = cache.v[layer, :end].transpose(0, 1)
        if prefix:
            out = self._segmented_attention(layer, q, keys, values, prefix, mask)
            return F.linear(out, lw.wo)
        if start == 0 and s > 1:
            # A prefill from an empty cache is plain causal attention: the fused kernel needs no mask.
            full = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], keys[None], values[None], is_causal=True, enable_gqa=True
            )[0]  # [H, S, D]
            return F.linear(full.transpose(0, 1).reshape(s, c.heads * c.head_dim), lw.wo)
        # Grouped-query attention without repeating K/V: the query heads sharing a KV head are
        # stacked along the query axis, so each KV head attends for group*S query rows.
        g = c.group_size
        qg = q.view(s, c.kv_heads, g, c.head_dim).permute(1, 2, 0, 3).reshape(c.kv_heads, g * s, c.head_dim)
        out = F.scaled_dot_product_attention(qg[None], keys[None], values[None], attn_mask=mask)[0]
        out = out.view(c.kv_heads, g, s, c.head_dim).permute(2, 0, 1, 3).reshape(s, c.heads * c.head_dim)
        return F.linear(out, lw.wo)

    def _segmented_attention(
        self,
        layer: int,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        prefix: Sequence[PrefixRows],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention over shared module rows (read in place, never copied) followed by the request's own rows.

        Each segment goes through the fused CPU attention kernel, which also returns the log-sum-exp of its
        scores; the segments' outputs are merged by those (as flash attention merges its blocks), so the result
        is one softmax over every row. The module rows all precede the new tokens: only the request's own
        segment needs the causal mask. q: [S, H, D]; keys, values: the own rows, [KV, N, D].
        """
        c = self.config
        s, g = q.shape[0], c.group_size
        qg = q.view(s, c.kv_heads, g, c.head_dim).permute(1, 2, 0, 3).reshape(c.kv_heads, g * s, c.head_dim)[None]
        outputs: list[torch.Tensor] = []
        lses: list[torch.Tensor] = []
        for rows in prefix:
            if rows.pending is not None:
                rows.pending.wait_layer(layer)
            k, v = rows.k[layer].transpose(0, 1)[None], rows.v[layer].transpose(0, 1)[None]  # [1, KV, T, D] views
            out, lse = _attention_with_lse(qg, k, v, None)
            outputs.append(out)
            lses.append(lse)
        out, lse = _attention_with_lse(qg, keys[None], values[None], None if mask is None else mask[None, None])
        outputs.append(out)
        lses.append(lse)
        total = torch.logsumexp(torch.stack(lses), dim=0)  # [1, KV, G*S]
        merged = sum(
            (o * torch.exp(part - total)[..., None].to(o.dtype) for o, part in zip(outputs, lses, strict=True)),
            torch.zeros_like(outputs[0]),
        )[0]  # [KV, G*S, D]
        return merged.view(c.kv_heads, g, s, c.head_dim).permute(2, 0, 1, 3).reshape(s, c.heads * c.head_dim)

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        lw = self.layers[layer]
        gate, up = F.linear(x, lw.w_gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, lw.w_down)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, prefix: Sequence[PrefixRows] = ()) -> torch.Tensor:
        """Append `tokens` ([S] int64) to the cache; returns logits of the last position: [vocab].

        `prefix`: module rows that precede the cache's own rows (shared, read in place): the cache's row i sits
        at position (prefix tokens + i).
        """
        start = cache.length
        cache.reserve(tokens.shape[0])
        offset = sum(rows.tokens for rows in prefix)
        x = self.embed[tokens]  # [S, hidden]
        mask = None if start == 0 and not prefix else self._extension_mask(start, tokens.shape[0])
        for layer, lw in enumerate(self.layers):
            h = self._rms_norm(x, lw.attn_norm)
            x = x + self._attention(layer, h, cache, prefix, offset + start, mask)
            x = x + self._mlp(layer, self._rms_norm(x, lw.mlp_norm))
        for rows in prefix:  # logits only from verified rows
            if rows.pending is not None:
                rows.pending.wait_done()
        cache.length = start + tokens.shape[0]
        last = self._rms_norm(x[-1:], self.final_norm)
        return F.linear(last, self.lm_head)[0].float()
