"""A replica puts its announcement when what it holds or its load changed, or a heartbeat is due, and not
otherwise; its sequence grows with every put."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cag.cachepool.announcer import Announcer, AnnouncerSettings, ReplicaState, state_of
from cag.cachepool.core import ModuleSpec, PoolSettings, Residency, Tier, TierBudgets
from cag.events.replicas import AnnouncedModule, ReplicaAnnouncementV1, ResidentTier

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class RecordingWriter:
    """The bucket's writer, keeping what was put."""

    def __init__(self) -> None:
        self.put_documents: list[ReplicaAnnouncementV1] = []

    async def put(self, document: ReplicaAnnouncementV1) -> None:
        self.put_documents.append(document)

    async def withdraw(self) -> None:
        raise AssertionError("not withdrawn in these tests")


def announcer(
    state: list[ReplicaState], heartbeat_s: float = 3600.0, *, ready: bool = True
) -> tuple[Announcer, RecordingWriter]:
    writer = RecordingWriter()
    settings = AnnouncerSettings(
        replica_id="pool-a", address="127.0.0.1:1", capacity=2, heartbeat_s=heartbeat_s, poll_s=0.1
    )
    return Announcer(settings, writer, lambda: state[-1], ready=lambda: ready, clock=lambda: NOW), writer  # type: ignore[arg-type]


def test_state_of_names_each_modules_fastest_tier() -> None:
    residency = Residency(PoolSettings(budgets=TierBudgets(engine_bytes=100, host_ram_bytes=100, local_disk_bytes=100)))
    residency.admit(ModuleSpec(module_id="m1", bytes=10, token_count=1), Tier.LOCAL_DISK, NOW)
    residency.admit(ModuleSpec(module_id="m1", bytes=10, token_count=1), Tier.ENGINE, NOW)
    residency.admit(ModuleSpec(module_id="m2", bytes=20, token_count=2), Tier.HOST_RAM, NOW)
    state = state_of(residency.stats(NOW + timedelta(seconds=1)), queued=1, running=2)
    assert state.modules == (
        AnnouncedModule(module_id="m1", tier=ResidentTier.ENGINE),
        AnnouncedModule(module_id="m2", tier=ResidentTier.HOST_RAM),
    )
    assert dict(state.bytes_per_tier) == {
        ResidentTier.ENGINE: 10,
        ResidentTier.HOST_RAM: 20,
        ResidentTier.LOCAL_DISK: 10,
    }
    assert (state.queued, state.running) == (1, 2)


async def test_it_puts_on_change_and_not_otherwise() -> None:
    empty = ReplicaState(modules=(), queued=0, running=0, bytes_per_tier=())
    states = [empty]
    subject, writer = announcer(states)
    assert await subject.announce_if_due()  # the first look always announces
    assert not await subject.announce_if_due()
    states.append(ReplicaState(modules=(), queued=1, running=0, bytes_per_tier=()))
    assert await subject.announce_if_due()
    assert [d.sequence for d in writer.put_documents] == [1, 2]
    assert writer.put_documents[-1].queued == 1


async def test_a_due_heartbeat_puts_the_same_state_again() -> None:
    states = [ReplicaState(modules=(), queued=0, running=0, bytes_per_tier=())]
    subject, writer = announcer(states, heartbeat_s=0.0)
    assert await subject.announce_if_due()
    assert await subject.announce_if_due()
    assert [d.sequence for d in writer.put_documents] == [1, 2]


async def test_nothing_is_put_before_the_replica_is_ready() -> None:
    subject, writer = announcer([ReplicaState(modules=(), queued=0, running=0, bytes_per_tier=())], ready=False)
    assert not await subject.announce_if_due()
    assert writer.put_documents == []
