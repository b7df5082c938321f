"""Tenants whose sources are being read again after a change. An answer for one of them waits (bounded) for the
new chunks instead of retrieving the old ones: the source event reaches the fallback before the router learns,
through the registry, that the module is stale, so the question the stale module no longer answers finds the
reindex already running."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable


class Reindexing:
    def __init__(self) -> None:
        self._busy: Counter[str] = Counter()  # tenant -> sources of it being reindexed now
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def running(self, tenant_id: str) -> AsyncIterator[None]:
        """Marks one of the tenant's sources as being reindexed for the duration of the block."""
        async with self._changed:
            self._busy[tenant_id] += 1
        try:
            yield
        finally:
            async with self._changed:
                self._busy[tenant_id] -= 1
                self._changed.notify_all()

    def busy(self, tenant_ids: Iterable[str]) -> bool:
        return any(self._busy[t] > 0 for t in tenant_ids)

    async def settled(self, tenant_ids: Iterable[str], timeout_s: float) -> bool:
        """Waits until no source of these tenants is being reindexed; False when `timeout_s` passed first (the
        chunks indexed now serve)."""
        tenants = tuple(tenant_ids)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: not self.busy(tenants)), timeout_s)
            except TimeoutError:
                return False
        return True
