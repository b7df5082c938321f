"""This replica's announcement (cag.events.replicas): what its tiers hold and its load, put in the replica bucket
when either changed (looked at every `poll_s`, so a burst of changes is one put) and every `heartbeat_s` anyway,
so that routers see it alive; withdrawn at shutdown.

It reads the pool's residency and the scheduler's counts from outside, on the event loop (the residency core takes
no locks and is only touched there): the pool itself knows nothing of announcements.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cag.cachepool.core import PoolStats
from cag.events.replica_bucket import AnnouncementWriter
from cag.events.replicas import AnnouncedModule, ReplicaAnnouncementV1, ResidentTier

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReplicaState:
    """What an announcement says, less its sequence and time: two equal states need no new put."""

    modules: tuple[AnnouncedModule, ...]
    queued: int
    running: int
    bytes_per_tier: tuple[tuple[ResidentTier, int], ...]


def state_of(stats: PoolStats, *, queued: int, running: int) -> ReplicaState:
    modules = tuple(
        AnnouncedModule(module_id=m.module_id, tier=ResidentTier(m.tiers[0].value)) for m in stats.modules if m.tiers
    )
    per_tier = tuple((ResidentTier(t.tier.value), t.bytes) for t in stats.tiers)
    return ReplicaState(modules=modules, queued=queued, running=running, bytes_per_tier=per_tier)


@dataclass(frozen=True, kw_only=True)
class AnnouncerSettings:
    replica_id: str
    address: str
    capacity: int
    heartbeat_s: float
    poll_s: float


class Announcer:
    def __init__(
        self,
        settings: AnnouncerSettings,
        writer: AnnouncementWriter,
        read_state: Callable[[], ReplicaState],
        ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self._writer = writer
        self._read_state = read_state
        self._ready = ready
        self._clock = clock
        self._sequence = 0
        self._last: ReplicaState | None = None
        self._last_put = float("-inf")

    def document(self, state: ReplicaState) -> ReplicaAnnouncementV1:
        s = self.settings
        return ReplicaAnnouncementV1(
            replica_id=s.replica_id,
            address=s.address,
            modules=list(state.modules),
            queued=state.queued,
            running=state.running,
            capacity=s.capacity,
            bytes_per_tier=dict(state.bytes_per_tier),
            sequence=self._sequence,
            sent_at=self._clock(),
        )

    async def announce_if_due(self) -> bool:
        """Puts the document when the state changed or a heartbeat is due; True when it put one. Nothing is put
        before the replica is ready to serve (a router would send it requests it refuses)."""
        if not self._ready():
            return False
        state = self._read_state()
        due = time.monotonic() - self._last_put >= self.settings.heartbeat_s
        if state == self._last and not due:
            return False
        self._sequence += 1
        await self._writer.put(self.document(state))
        self._last, self._last_put = state, time.monotonic()
        return True

    async def run(self) -> None:
        """Until cancelled; a failed put (NATS away) is logged and tried again at the next look."""
        while True:
            try:
                await self.announce_if_due()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("replica %s: announcement not put: %s", self.settings.replica_id, e)
            await asyncio.sleep(self.settings.poll_s)

    async def withdraw(self) -> None:
        """Deletes this replica's key (routers stop choosing it at once); best effort at shutdown."""
        try:
            await self._writer.withdraw()
        except Exception as e:
            log.warning(
                "replica %s: announcement not withdrawn (it expires on its own): %s", self.settings.replica_id, e
            )
