"""The request queue's bookkeeping: at most `max_running` requests hold an engine slot, at most `max_queued`
wait for one (first come, first served); anyone beyond is refused with a retry hint.

Pure: tickets are opaque integers, time is passed in; the async adapter (cag.cachepool.scheduler) wakes the
tickets this core says start.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cag.errors import InvalidFieldError, OverloadedError


@dataclass(frozen=True, kw_only=True)
class QueueLimits:
    max_running: int
    max_queued: int
    # The retry hint before any request finished, seconds; later hints come from measured durations.
    initial_request_s: float = 1.0
    # Weight of each finished request's duration in the mean, in (0, 1].
    duration_ewma_alpha: float = 0.2

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise InvalidFieldError("max_running", "must be at least 1")
        if self.max_queued < 0:
            raise InvalidFieldError("max_queued", "must be >= 0")
        if self.initial_request_s <= 0:
            raise InvalidFieldError("initial_request_s", "must be > 0")
        if not 0 < self.duration_ewma_alpha <= 1:
            raise InvalidFieldError("duration_ewma_alpha", "must be in (0, 1]")


class AdmissionQueue:
    """Running and waiting tickets, and the mean time a running request holds its slot."""

    def __init__(self, limits: QueueLimits) -> None:
        self.limits = limits
        self._running: set[int] = set()
        self._waiting: deque[int] = deque()
        self._mean_request_s = limits.initial_request_s

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def arrive(self, ticket: int) -> bool:
        """True: the ticket runs now; False: it waits. OverloadedError (nothing recorded) when the queue is full."""
        if ticket in self._running or ticket in self._waiting:
            raise InvalidFieldError("ticket", f"{ticket} arrived twice")
        if len(self._running) < self.limits.max_running and not self._waiting:
            self._running.add(ticket)
            return True
        if len(self._waiting) >= self.limits.max_queued:
            raise OverloadedError(
                f"the cache pool is busy: {self.running} requests running and {self.queued} waiting (the most it "
                "queues); try again later",
                retry_after_s=self.retry_after_s(),
            )
        self._waiting.append(ticket)
        return False

    def leave(self, ticket: int, *, ran_s: float | None = None) -> list[int]:
        """The ticket is done (finished, failed or cancelled, running or still waiting). `ran_s`: how long it
        held its slot, folded into the retry hint. Returns the waiting tickets that start now, in order."""
        if ticket in self._running:
            self._running.discard(ticket)
            if ran_s is not None:
                alpha = self.limits.duration_ewma_alpha
                self._mean_request_s = alpha * ran_s + (1 - alpha) * self._mean_request_s
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        started = []
        while self._waiting and len(self._running) < self.limits.max_running:
            next_ticket = self._waiting.popleft()
            self._running.add(next_ticket)
            started.append(next_ticket)
        return started

    def retry_after_s(self) -> float:
        """When a slot should be free for a newcomer: the queue ahead of it drained at the measured pace."""
        rounds = (len(self._waiting) + 1) / self.limits.max_running
        return round(max(0.05, rounds * self._mean_request_s), 3)
