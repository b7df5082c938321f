"""Sampling parameters and the next-token choice."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cag.errors import InvalidFieldError


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
    # How many of the most likely next tokens each generated token reports with its log-probability.
    logprobs: int = 0

    def ends_answer(self, generated: list[int]) -> bool:
        return generated[-1] in self.stop_token_ids or any(
            tuple(generated[-len(s) :]) == s for s in self.stop_sequences
        )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidFieldError("max_new_tokens", f"must be at least 1, not {self.max_new_tokens}")
        if not self.temperature >= 0:  # also refuses NaN
            raise InvalidFieldError("temperature", f"must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidFieldError("top_p", f"must be in (0, 1], not {self.top_p}")
        if self.logprobs < 0:
            raise InvalidFieldError("logprobs", f"must be >= 0, not {self.logprobs}")
        if any(not s for s in self.stop_sequences):
            raise InvalidFieldError("stop_sequences", "must not hold an empty sequence")


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


def top_logprobs(logits: torch.Tensor, n: int) -> tuple[tuple[int, float], ...]:
    """The `n` most likely tokens of logits [vocab] as (token id, log-probability), most likely first."""
    if n == 0:
        return ()
    values, ids = torch.log_softmax(logits.float(), dim=-1).topk(n)  # [n], [n]
    return tuple(zip(ids.tolist(), values.tolist(), strict=True))
