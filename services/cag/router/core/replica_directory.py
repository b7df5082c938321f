"""The cache-pool replicas a router knows: their announcements, its own requests on each, the ones that failed.

Pure bookkeeping (no clock: callers pass `now`, seconds on a monotonic clock). A replica a call failed on stays
out until it announces again (a later sequence than the one it had when it failed): a dead replica stops
announcing, and its entry also goes stale and leaves the bucket. Static replicas (a configured address, no
announcements) are never marked failed and never go stale: with nothing to announce them back, marking them
would lock them out for good.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cag.events.replicas import ReplicaAnnouncementV1
from cag.router.core.replicas import ReplicaView


@dataclass(frozen=True, kw_only=True)
class _Known:
    view: ReplicaView
    sequence: int
    static: bool = False


class ReplicaDirectory:
    def __init__(self) -> None:
        self._known: dict[str, _Known] = {}
        self._failed_at: dict[str, int] = {}  # replica id → the sequence it had when a call to it failed
        self._in_flight: dict[str, int] = {}

    def add_static(self, replica_id: str, address: str, capacity: int = 1) -> None:
        view = ReplicaView(replica_id=replica_id, address=address, capacity=capacity, heard_at=float("inf"))
        self._known[replica_id] = _Known(view=view, sequence=0, static=True)

    def announce(self, document: ReplicaAnnouncementV1, now: float) -> None:
        """A replica's announcement; one older than the last seen (a replay of the bucket) is ignored."""
        known = self._known.get(document.replica_id)
        if known is not None and not known.static and document.sequence < known.sequence:
            return
        view = ReplicaView(
            replica_id=document.replica_id,
            address=document.address,
            tiers=document.tiers(),
            load=document.queued + document.running,
            capacity=document.capacity,
            heard_at=now,
        )
        self._known[document.replica_id] = _Known(view=view, sequence=document.sequence)
        if self._failed_at.get(document.replica_id, -1) < document.sequence:
            self._failed_at.pop(document.replica_id, None)

    def forget(self, replica_id: str) -> None:
        """The replica's key left the bucket (deleted at its shutdown, or expired)."""
        known = self._known.get(replica_id)
        if known is not None and not known.static:
            del self._known[replica_id]
            self._failed_at.pop(replica_id, None)

    def mark_failed(self, replica_id: str) -> None:
        known = self._known.get(replica_id)
        if known is not None and not known.static:
            self._failed_at[replica_id] = known.sequence

    def started(self, replica_id: str) -> None:
        self._in_flight[replica_id] = self._in_flight.get(replica_id, 0) + 1

    def finished(self, replica_id: str) -> None:
        left = self._in_flight.get(replica_id, 0) - 1
        if left > 0:
            self._in_flight[replica_id] = left
        else:
            self._in_flight.pop(replica_id, None)

    def is_static(self, replica_id: str) -> bool:
        known = self._known.get(replica_id)
        return known is not None and known.static

    def address_of(self, replica_id: str) -> str | None:
        known = self._known.get(replica_id)
        return known.view.address if known is not None else None

    def views(self) -> list[ReplicaView]:
        """Every known replica, its load the larger of what it announced and this router's requests on it."""
        return [
            replace(
                k.view,
                load=max(k.view.load, self._in_flight.get(replica_id, 0)),
                failed=replica_id in self._failed_at,
            )
            for replica_id, k in self._known.items()
        ]
