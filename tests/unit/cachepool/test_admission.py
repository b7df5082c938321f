"""The request queue's bookkeeping: slots, first come first served within a tenant, turns across tenants (deficit
round robin, weights, per-tenant shares, a reserved slot), refusal with a retry hint, leaving early; and a flood in
simulated time."""

from __future__ import annotations

import heapq
import itertools
import math
import random

import pytest

from cag.cachepool.core.admission import AdmissionQueue, QueueLimits
from cag.errors import InvalidFieldError, OverloadedError, Status


def queue(running: int = 2, queued: int = 2) -> AdmissionQueue:
    return AdmissionQueue(QueueLimits(max_running=running, max_queued=queued, initial_request_s=1.0))


def test_runs_up_to_max_running_then_queues_then_refuses() -> None:
    q = queue()
    assert [q.arrive(t) for t in (1, 2, 3, 4)] == [True, True, False, False]
    assert (q.running, q.queued) == (2, 2)
    with pytest.raises(OverloadedError) as refused:
        q.arrive(5)
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    assert refused.value.retry_after_s > 0
    assert (q.running, q.queued) == (2, 2)  # the refused ticket left nothing behind


def test_a_finished_ticket_starts_the_oldest_waiting_one() -> None:
    q = queue()
    for t in (1, 2, 3, 4):
        q.arrive(t)
    assert q.leave(2) == [3]
    assert q.leave(1) == [4]
    assert q.leave(3) == []
    assert (q.running, q.queued) == (1, 0)


def test_a_cancelled_waiting_ticket_leaves_the_queue_without_starting_anyone() -> None:
    q = queue(running=1, queued=2)
    q.arrive(1)
    q.arrive(2)
    q.arrive(3)
    assert q.leave(2) == []
    assert q.leave(1) == [3]


def test_newcomers_wait_behind_the_queue_even_when_a_slot_is_free() -> None:
    """First come, first served: a slot freed is the oldest waiter's, never a newcomer's."""
    q = queue(running=1, queued=2)
    q.arrive(1)
    q.arrive(2)
    started = q.leave(1)
    assert started == [2]
    assert q.arrive(3) is False


def test_the_retry_hint_follows_measured_request_durations_and_the_queue_ahead() -> None:
    q = AdmissionQueue(QueueLimits(max_running=1, max_queued=1, initial_request_s=1.0, duration_ewma_alpha=1.0))
    q.arrive(1)
    q.leave(1, ran_s=0.5)  # the mean is now 0.5 s
    q.arrive(2)
    q.arrive(3)
    with pytest.raises(OverloadedError) as refused:
        q.arrive(4)
    assert refused.value.retry_after_s == pytest.approx(2 * 0.5)  # one waiting ahead plus itself, one slot


@pytest.mark.parametrize(("running", "queued"), [(0, 1), (1, -1)])
def test_limits_are_validated(running: int, queued: int) -> None:
    with pytest.raises(InvalidFieldError):
        QueueLimits(max_running=running, max_queued=queued)


# ---------------------------------------------------------------- fair queueing across tenants


def order_of(q: AdmissionQueue, first: int) -> list[int]:
    """The order waiting tickets start in, one slot: `first` runs, and each started ticket finishes in turn."""
    order, running = [], [first]
    while running:
        started = q.leave(running.pop())
        order += started
        running += started
    return order


def test_waiting_tenants_take_turns_first_come_first_served_within_each() -> None:
    q = queue(running=1, queued=10)
    q.arrive(1, tenant="a")
    for ticket, tenant in ((2, "a"), (3, "a"), (4, "a"), (5, "b"), (6, "b"), (7, "c")):
        assert q.arrive(ticket, tenant=tenant) is False
    assert (q.queued_for("a"), q.queued_for("b"), q.running_for("a")) == (3, 2, 1)
    assert order_of(q, 1) == [2, 5, 7, 3, 6, 4]
    assert (q.running, q.queued) == (0, 0)


def test_a_heavier_weight_starts_more_per_turn_up_to_the_cap() -> None:
    q = AdmissionQueue(QueueLimits(max_running=1, max_queued=10, max_weight=2))
    q.arrive(1, tenant="a")
    for ticket in (2, 3, 4, 5):
        q.arrive(ticket, tenant="a", weight=100)  # counts as the cap, 2
    for ticket in (6, 7, 8):
        q.arrive(ticket, tenant="b")
    assert order_of(q, 1) == [2, 3, 6, 4, 5, 7, 8]


def test_a_costly_ticket_waits_for_the_turns_to_add_up_while_cheaper_lanes_go_on() -> None:
    q = queue(running=1, queued=10)
    q.arrive(1, tenant="a")
    q.arrive(2, tenant="a", cost=2.5)
    q.arrive(3, tenant="a", cost=2.5)
    for ticket in (4, 5, 6, 7):
        q.arrive(ticket, tenant="b")
    # a's deficit: 1, 2, 3 -> starts 2 (0.5 left), 1.5, 2.5 -> starts 3
    assert order_of(q, 1) == [4, 5, 2, 6, 7, 3]


def test_a_tenant_over_its_share_is_refused_while_others_still_queue() -> None:
    q = AdmissionQueue(QueueLimits(max_running=1, max_queued=4, tenant_queue_share=0.5))
    assert q.limits.max_queued_per_tenant == 2
    q.arrive(1, tenant="a")
    q.arrive(2, tenant="a")
    q.arrive(3, tenant="a")
    with pytest.raises(OverloadedError, match="tenant 'a'") as refused:
        q.arrive(4, tenant="a")
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    assert refused.value.retry_after_s > 0
    assert q.arrive(5, tenant="b") is False
    assert q.arrive(6, tenant="b") is False
    with pytest.raises(OverloadedError, match="the cache pool is busy"):
        q.arrive(7, tenant="c")  # the whole waiting room is full
    assert (q.running, q.queued, q.queued_for("a"), q.queued_for("c")) == (1, 4, 2, 0)


def test_a_reserved_slot_goes_only_to_a_tenant_running_nothing() -> None:
    q = AdmissionQueue(QueueLimits(max_running=2, max_queued=10, reserved_slots=1))
    assert q.arrive(1, tenant="a") is True
    assert q.arrive(2, tenant="a") is False  # the free slot is the reserved one
    assert q.arrive(3, tenant="b") is True  # b runs nothing: it may take it
    assert q.arrive(4, tenant="b") is False
    assert q.leave(3) == [4]  # b holds none again; a still holds one
    assert q.leave(1) == [2]
    assert q.leave(4) == []
    assert (q.running, q.queued) == (1, 0)


def test_one_slot_is_never_reserved() -> None:
    q = AdmissionQueue(QueueLimits(max_running=1, max_queued=1, reserved_slots=3))
    assert q.limits.reserve == 0
    assert q.arrive(1, tenant="a") is True


def test_a_cancelled_waiting_ticket_leaves_its_lane_and_the_turns_go_on() -> None:
    q = queue(running=1, queued=10)
    q.arrive(1, tenant="a")
    q.arrive(2, tenant="a")
    q.arrive(3, tenant="b")
    q.arrive(4, tenant="c")
    assert q.leave(3) == []
    assert q.queued_for("b") == 0
    assert order_of(q, 1) == [2, 4]


def test_the_retry_hint_of_a_tenant_over_its_share_counts_turns_not_the_whole_queue() -> None:
    q = AdmissionQueue(QueueLimits(max_running=1, max_queued=8, tenant_queue_share=0.5, initial_request_s=1.0))
    q.arrive(1, tenant="a")
    for ticket in (2, 3):
        q.arrive(ticket, tenant="a")
    for ticket in (4, 5, 6, 7):
        q.arrive(ticket, tenant="b")
    assert q.retry_after_s("a") == pytest.approx(2 + 3 + 1)  # its 2, 3 of b's before its third turn, itself
    assert q.retry_after_s() == pytest.approx(6 + 1)


@pytest.mark.parametrize(
    "field", [{"tenant_queue_share": 0.0}, {"tenant_queue_share": 1.5}, {"reserved_slots": -1}, {"quantum": 0.0},
              {"max_weight": 0}],
)  # fmt: skip
def test_fairness_limits_are_validated(field: dict[str, float]) -> None:
    with pytest.raises(InvalidFieldError):
        QueueLimits(max_running=2, max_queued=2, **field)  # type: ignore[arg-type]


@pytest.mark.parametrize(("weight", "cost"), [(0, 1.0), (1, 0.0)])
def test_a_ticket_needs_a_positive_weight_and_cost(weight: int, cost: float) -> None:
    q = queue()
    with pytest.raises(InvalidFieldError):
        q.arrive(1, tenant="a", weight=weight, cost=cost)
    assert (q.running, q.queued) == (0, 0)


# ---------------------------------------------------------------- a flood, in simulated time

# Durations from benchmarks/results/e2e.json (torch engine, one client, 8-token answers on a 512-token module):
# the first token 0.16 s after the slot is granted, the slot held about 0.62 s in all.
FIRST_TOKEN_S = 0.16
HOLD_S = (0.5, 0.75)
B_EVERY_S = (0.8, 1.2)  # a modest tenant: one request at a time, about one a second
FLOOD_CLIENTS = 24  # each sends its next request as soon as its last is answered (or after the retry hint)
HORIZON_S = 300.0


def b_ttfts(limits: QueueLimits, *, flood: bool, tenant_blind: bool = False) -> list[float]:
    """Tenant B's times to first token (s; a refusal counts as infinite) in a discrete-event simulation of the
    queue: B alone, or while A floods. `tenant_blind`: every request in one lane, first come first served."""
    q, rng = AdmissionQueue(limits), random.Random(7)
    events: list[tuple[float, int, str, str, int]] = []  # (at, seq, "arrive" | "finish", tenant, ticket)
    seq, tickets = itertools.count(), itertools.count(1)
    arrived: dict[int, float] = {}
    tenant_of: dict[int, str] = {}
    hold: dict[int, float] = {}
    ttfts: list[float] = []

    def push(at: float, kind: str, tenant: str, ticket: int = 0) -> None:
        heapq.heappush(events, (at, next(seq), kind, tenant, ticket))

    def start(ticket: int, now: float) -> None:
        if tenant_of[ticket] == "b":
            ttfts.append(now - arrived[ticket] + FIRST_TOKEN_S)
        push(now + hold[ticket], "finish", tenant_of[ticket], ticket)

    at = 0.0
    while (at := at + rng.uniform(*B_EVERY_S)) < HORIZON_S:
        push(at, "arrive", "b")
    for _ in range(FLOOD_CLIENTS if flood else 0):
        push(rng.uniform(0, 1), "arrive", "a")
    while events:
        now, _, kind, tenant, ticket = heapq.heappop(events)
        if kind == "finish":
            for started in q.leave(ticket, ran_s=hold[ticket]):
                start(started, now)
            if tenant == "a" and now < HORIZON_S:
                push(now, "arrive", "a")
            continue
        ticket = next(tickets)
        arrived[ticket], tenant_of[ticket], hold[ticket] = now, tenant, rng.uniform(*HOLD_S)
        try:
            if q.arrive(ticket, tenant="" if tenant_blind else tenant):
                start(ticket, now)
        except OverloadedError as refused:
            if tenant == "a":
                push(now + refused.retry_after_s, "arrive", "a")
            else:
                ttfts.append(math.inf)
    return ttfts


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def test_a_flooding_tenant_keeps_a_modest_tenants_p99_ttft_within_2x_of_quiet_where_fifo_does_not() -> None:
    fifo = QueueLimits(max_running=4, max_queued=32)
    turns_only = QueueLimits(max_running=4, max_queued=32, tenant_queue_share=0.5)
    fair = QueueLimits(max_running=4, max_queued=32, tenant_queue_share=0.5, reserved_slots=1)
    ratios = {}
    for name, limits, blind in (("fifo", fifo, True), ("turns_only", turns_only, False), ("fair", fair, False)):
        quiet = b_ttfts(limits, flood=False, tenant_blind=blind)
        flooded = b_ttfts(limits, flood=True, tenant_blind=blind)
        assert len(flooded) == len(quiet) > 250  # the same requests from B, every one answered or refused
        ratios[name] = p99(flooded) / p99(quiet)
    assert ratios["fair"] <= 2.0
    assert ratios["fifo"] > 2.0 * 5  # B waits behind the flood's whole queue
    # Without the reserved slot B still waits for one of A's answers to end: taking turns alone is not enough.
    assert ratios["turns_only"] > 2.0
