"""When the SDK tries a call again: only for UNAVAILABLE and RESOURCE_EXHAUSTED, only before the first token of
an answer arrived (after that, a retry would show the reader a second, possibly different answer), a bounded
number of attempts, jittered exponential backoff that honours the server's retry-after, never past the
call's deadline."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from cag.client.errors import FALLBACK_UNAVAILABLE, CagClientError
from cag.errors import InvalidFieldError

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """`max_attempts` calls at most (1: never retry); attempt n waits a uniformly random time up to
    min(max_backoff_s, initial_backoff_s * multiplier**(n-1)) ("full jitter", so that clients refused together
    do not come back together), or the server's retry-after when that is longer."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidFieldError("max_attempts", f"must be at least 1, got {self.max_attempts}")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s:
            raise InvalidFieldError("initial_backoff_s", "must be between 0 and max_backoff_s")
        if self.multiplier < 1:
            raise InvalidFieldError("multiplier", f"must be at least 1, got {self.multiplier}")

    def delay_s(
        self,
        attempt: int,
        error: CagClientError,
        *,
        tokens_seen: bool = False,
        remaining_s: float = float("inf"),
        jitter: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before trying again after attempt number `attempt` (1-based) failed with `error`;
        None: give up and raise it. `remaining_s`: time left before the call's deadline; `jitter`: in [0, 1)."""
        if tokens_seen or attempt >= self.max_attempts or not is_retryable(error):
            return None
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        delay = max(ceiling * jitter(), error.retry_after_s or 0.0)
        return delay if delay < remaining_s else None


def is_retryable(error: CagClientError) -> bool:
    """UNAVAILABLE and RESOURCE_EXHAUSTED are transient; FALLBACK_UNAVAILABLE is the router's settled answer
    that nothing can serve the query, which a retry a moment later would only repeat."""
    return error.code in RETRYABLE_CODES and error.reason != FALLBACK_UNAVAILABLE


NO_RETRY = RetryPolicy(max_attempts=1)
