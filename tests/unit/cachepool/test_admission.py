"""The request queue's bookkeeping: slots, first come first served, refusal with a retry hint, leaving early."""

from __future__ import annotations

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
