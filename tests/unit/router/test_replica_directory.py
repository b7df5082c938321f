"""The router's book of replicas: announcements in sequence order, failures until the next announcement, its own
requests counted in the load."""

from __future__ import annotations

from datetime import UTC, datetime

from cag.events.replicas import AnnouncedModule, ReplicaAnnouncementV1, ResidentTier
from cag.router.core.replica_directory import ReplicaDirectory
from cag.router.core.replicas import ReplicaView


def announcement(
    replica_id: str, sequence: int, *, queued: int = 0, modules: tuple[str, ...] = ()
) -> ReplicaAnnouncementV1:
    return ReplicaAnnouncementV1(
        replica_id=replica_id,
        address=f"127.0.0.1:{5000 + sequence}",
        modules=[AnnouncedModule(module_id=m, tier=ResidentTier.HOST_RAM) for m in modules],
        queued=queued,
        capacity=2,
        sequence=sequence,
        sent_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def view(directory: ReplicaDirectory, replica_id: str) -> ReplicaView:
    return next(v for v in directory.views() if v.replica_id == replica_id)


def test_an_announcement_becomes_a_view_heard_now() -> None:
    directory = ReplicaDirectory()
    directory.announce(announcement("a", 1, queued=3, modules=("m1",)), now=10.0)
    assert view(directory, "a") == ReplicaView(
        replica_id="a", address="127.0.0.1:5001", tiers={"m1": ResidentTier.HOST_RAM}, load=3, capacity=2, heard_at=10.0
    )


def test_an_older_sequence_is_ignored() -> None:
    directory = ReplicaDirectory()
    directory.announce(announcement("a", 5), now=10.0)
    directory.announce(announcement("a", 4, modules=("old",)), now=11.0)
    assert view(directory, "a").tiers == {}
    assert view(directory, "a").heard_at == 10.0


def test_a_failed_replica_stays_failed_until_it_announces_again() -> None:
    directory = ReplicaDirectory()
    directory.announce(announcement("a", 5), now=10.0)
    directory.mark_failed("a")
    assert view(directory, "a").failed
    directory.announce(announcement("a", 5), now=11.0)  # the same document again (a replay): still failed
    assert view(directory, "a").failed
    directory.announce(announcement("a", 6), now=12.0)
    assert not view(directory, "a").failed


def test_the_routers_own_requests_count_when_the_announcement_lags() -> None:
    directory = ReplicaDirectory()
    directory.announce(announcement("a", 1, queued=1), now=10.0)
    for _ in range(3):
        directory.started("a")
    assert view(directory, "a").load == 3
    directory.finished("a")
    directory.finished("a")
    assert view(directory, "a").load == 1  # the announced load again


def test_a_withdrawn_replica_is_forgotten() -> None:
    directory = ReplicaDirectory()
    directory.announce(announcement("a", 1), now=10.0)
    directory.forget("a")
    assert directory.views() == []
    assert directory.address_of("a") is None


def test_a_static_replica_is_never_failed_stale_or_forgotten() -> None:
    directory = ReplicaDirectory()
    directory.add_static("static", "127.0.0.1:50052")
    directory.mark_failed("static")
    directory.forget("static")
    (only,) = directory.views()
    assert not only.failed
    assert only.healthy(now=1e12, stale_after_s=1.0)
