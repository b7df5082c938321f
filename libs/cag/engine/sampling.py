"""Sampling parameters and the next-token choice."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Greedy when temperature is 0; otherwise temperature + nucleus sampling from a seeded generator."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    # Token sequences that end the answer once generated (e.g. a paragraph break), kept in the output.
    stop_sequences: frozenset[tuple[int, ...]] = field(default_factory=frozenset)

    def ends_answer(self, generated: list[int]) -> bool:
        return generated[-1] in self.stop_token_ids or any(
            tuple(generated[-len(s) :]) == s for s in self.stop_sequences
        )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


class TokenSampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator = torch.Generator().manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """logits: [vocab] of the last position."""
        if self.params.temperature == 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.params.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=self._generator)
        return int(order[choice].item())
