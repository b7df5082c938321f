"""The request queue's bookkeeping: at most `max_running` requests hold an engine slot, at most `max_queued`
wait for one; anyone beyond is refused with a retry hint.

Waiting is fair across tenants, by deficit round robin (Shreedhar and Varghese, 1995): each tenant with
requests waiting has a lane, first come first served within it; the lanes take turns, and a turn lets a lane
start requests worth up to `quantum × weight` cost units (the weight is its head request's, a route's
priority, capped at `max_weight`); what a turn cannot spend carries over to the lane's next one. A tenant may
fill at most `tenant_queue_share` of the waiting room: a flooding tenant is refused for its own excess while
the others still queue.

Slots are not preempted, so taking turns alone would still leave a newcomer waiting for the next slot to free
up: up to one whole answer, many times its time to first token. The last `reserved_slots` free slots
therefore go only to tenants that hold none: a tenant's first request starts at once while another floods,
at the price of those slots standing idle while one tenant has the pool to itself.

With the defaults (a share of 1, no reserved slot) and a single tenant this is the plain first come, first
served queue.

Pure: tickets are opaque integers, durations are passed in; the async adapter (cag.cachepool.scheduler) wakes
the tickets this core says start.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

from cag.errors import InvalidFieldError, OverloadedError


@dataclass(frozen=True, kw_only=True)
class QueueLimits:
    max_running: int
    max_queued: int
    # The most of `max_queued` one tenant's waiting requests may fill, in (0, 1].
    tenant_queue_share: float = 1.0
    # Slots only tenants running nothing may take (at most max_running - 1 are kept).
    reserved_slots: int = 0
    # Cost units a lane of weight 1 may start per turn (a request costs 1 unless told otherwise).
    quantum: float = 1.0
    # A heavier weight buys no more turns than this.
    max_weight: int = 8
    # The retry hint before any request finished, seconds; later hints come from measured durations.
    initial_request_s: float = 1.0
    # Weight of each finished request's duration in the mean, in (0, 1].
    duration_ewma_alpha: float = 0.2

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise InvalidFieldError("max_running", "must be at least 1")
        if self.max_queued < 0:
            raise InvalidFieldError("max_queued", "must be >= 0")
        if not 0 < self.tenant_queue_share <= 1:
            raise InvalidFieldError("tenant_queue_share", "must be in (0, 1]")
        if self.reserved_slots < 0:
            raise InvalidFieldError("reserved_slots", "must be >= 0")
        if self.quantum <= 0:
            raise InvalidFieldError("quantum", "must be > 0")
        if self.max_weight < 1:
            raise InvalidFieldError("max_weight", "must be at least 1")
        if self.initial_request_s <= 0:
            raise InvalidFieldError("initial_request_s", "must be > 0")
        if not 0 < self.duration_ewma_alpha <= 1:
            raise InvalidFieldError("duration_ewma_alpha", "must be in (0, 1]")

    @property
    def max_queued_per_tenant(self) -> int:
        return math.ceil(self.max_queued * self.tenant_queue_share)

    @property
    def reserve(self) -> int:
        """Slots kept for tenants running nothing; one slot is always anyone's."""
        return min(self.reserved_slots, self.max_running - 1)


@dataclass(frozen=True)
class _Waiting:
    ticket: int
    weight: int
    cost: float


@dataclass
class _Lane:
    """One tenant's waiting tickets, oldest first, and what its turns left unspent."""

    tickets: deque[_Waiting] = field(default_factory=deque)
    deficit: float = 0.0
    in_turn: bool = False


class AdmissionQueue:
    """Running and waiting tickets, per tenant, and the mean time a running request holds its slot."""

    def __init__(self, limits: QueueLimits) -> None:
        self.limits = limits
        self._running: dict[int, str] = {}  # ticket -> tenant
        self._held: Counter[str] = Counter()  # tenant -> slots it holds
        self._waiting: dict[int, str] = {}  # ticket -> tenant
        self._lanes: dict[str, _Lane] = {}  # the tenants with tickets waiting
        self._turns: deque[str] = deque()  # the lanes in round-robin order, the one whose turn it is first
        self._mean_request_s = limits.initial_request_s

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def running_for(self, tenant: str) -> int:
        return self._held[tenant]

    def queued_for(self, tenant: str) -> int:
        lane = self._lanes.get(tenant)
        return len(lane.tickets) if lane else 0

    def arrive(self, ticket: int, *, tenant: str = "", weight: int = 1, cost: float = 1.0) -> bool:
        """True: the ticket runs now; False: it waits in its tenant's lane. `weight` >= 1: the lane's share of a
        round while this ticket heads it; `cost` > 0: what starting it spends of a turn. OverloadedError (nothing
        recorded) when the queue, or the tenant's share of it, is full."""
        if ticket in self._running or ticket in self._waiting:
            raise InvalidFieldError("ticket", f"{ticket} arrived twice")
        if weight < 1:
            raise InvalidFieldError("weight", "must be at least 1")
        if not cost > 0:
            raise InvalidFieldError("cost", "must be > 0")
        # Every waiting ticket is one no free slot may take (leave() starts all that may): a newcomer allowed a
        # slot jumps no one, and its own lane is empty.
        if self._may_start(tenant):
            self._start(ticket, tenant)
            return True
        self._check_room(tenant)
        lane = self._lanes.get(tenant)
        if lane is None:
            lane = self._lanes[tenant] = _Lane()
            self._turns.append(tenant)
        lane.tickets.append(_Waiting(ticket, min(weight, self.limits.max_weight), cost))
        self._waiting[ticket] = tenant
        return False

    def leave(self, ticket: int, *, ran_s: float | None = None) -> list[int]:
        """The ticket is done (finished, failed or cancelled, running or still waiting). `ran_s`: how long it
        held its slot, folded into the retry hint. Returns the waiting tickets that start now, in order."""
        tenant = self._running.pop(ticket, None)
        if tenant is not None:
            self._held[tenant] -= 1
            if not self._held[tenant]:
                del self._held[tenant]
            if ran_s is not None:
                alpha = self.limits.duration_ewma_alpha
                self._mean_request_s = alpha * ran_s + (1 - alpha) * self._mean_request_s
        elif ticket in self._waiting:
            self._withdraw(ticket)
        return self._fill()

    def retry_after_s(self, tenant: str | None = None) -> float:
        """When a slot should be free for a newcomer: the requests that start before it drained at the measured
        pace. For a tenant's own newcomer those are its lane and, turn by turn, as many from each other lane."""
        if tenant is None:
            ahead = len(self._waiting)
        else:
            own = self.queued_for(tenant)
            ahead = own + sum(min(len(lane.tickets), own + 1) for t, lane in self._lanes.items() if t != tenant)
        rounds = (ahead + 1) / self.limits.max_running
        return round(max(0.05, rounds * self._mean_request_s), 3)

    def _may_start(self, tenant: str) -> bool:
        running = len(self._running)
        if running >= self.limits.max_running:
            return False
        return not self._held[tenant] or running < self.limits.max_running - self.limits.reserve

    def _check_room(self, tenant: str) -> None:
        if len(self._waiting) >= self.limits.max_queued:
            raise OverloadedError(
                f"the cache pool is busy: {self.running} requests running and {self.queued} waiting (the most it "
                "queues); try again later",
                retry_after_s=self.retry_after_s(),
            )
        own = self.queued_for(tenant)
        if own >= self.limits.max_queued_per_tenant:
            raise OverloadedError(
                f"tenant {tenant!r} already has {own} requests waiting for the cache pool (the most one tenant may "
                "queue); try again later",
                retry_after_s=self.retry_after_s(tenant),
            )

    def _start(self, ticket: int, tenant: str) -> None:
        self._running[ticket] = tenant
        self._held[tenant] += 1

    def _withdraw(self, ticket: int) -> None:
        tenant = self._waiting.pop(ticket)
        lane = self._lanes[tenant]
        lane.tickets = deque(w for w in lane.tickets if w.ticket != ticket)
        if not lane.tickets:
            self._drop_lane(tenant)

    def _fill(self) -> list[int]:
        started = []
        while len(self._running) < self.limits.max_running:
            # Once only reserved slots are free, only tenants holding none may take one.
            idle_only = len(self._running) >= self.limits.max_running - self.limits.reserve
            picked = self._next(idle_only)
            if picked is None:
                break
            self._start(*picked)
            started.append(picked[0])
        return started

    def _next(self, idle_only: bool) -> tuple[int, str] | None:
        """The next waiting ticket and its tenant in round-robin order (among the lanes of tenants holding no slot
        when `idle_only`); None when none may start."""
        while True:
            tenant = next((t for t in self._turns if not idle_only or not self._held[t]), None)
            if tenant is None:
                return None
            lane = self._lanes[tenant]
            head = lane.tickets[0]
            if not lane.in_turn:
                lane.in_turn = True
                lane.deficit += self.limits.quantum * head.weight
            if head.cost > lane.deficit:
                self._end_turn(tenant)  # what is left carries over: a costly ticket starts after a few turns
                continue
            lane.tickets.popleft()
            lane.deficit -= head.cost
            del self._waiting[head.ticket]
            if not lane.tickets:
                self._drop_lane(tenant)
            elif lane.tickets[0].cost > lane.deficit:
                self._end_turn(tenant)
            return head.ticket, tenant

    def _end_turn(self, tenant: str) -> None:
        self._lanes[tenant].in_turn = False
        self._turns.remove(tenant)
        self._turns.append(tenant)

    def _drop_lane(self, tenant: str) -> None:
        # An emptied lane forgets its deficit: credit is not saved up while a tenant has nothing waiting.
        del self._lanes[tenant]
        self._turns.remove(tenant)
