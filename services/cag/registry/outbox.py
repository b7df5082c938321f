"""The outbox relay: publishes committed registry events to NATS in order, and survives NATS outages.

Rows are published oldest first and marked only after JetStream acknowledged them; the
first failure stops the batch, so per-module order holds and nothing is skipped. A row
published but not yet marked when the relay dies is published again with the same
Nats-Msg-Id and deduplicated by JetStream (and by consumers, by event id).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cag.events.schemas import Envelope
from cag.lifecycle import StopSignal
from cag.registry.db.schema import OutboxRow

log = logging.getLogger(__name__)
Publish = Callable[[Envelope], Awaitable[None]]


class OutboxRelay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publish: Publish,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.02,
        retry_interval_s: float = 0.5,
    ) -> None:
        self.sessions = sessions
        self.publish = publish
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.retry_interval_s = retry_interval_s

    async def drain_once(self) -> tuple[int, bool]:
        """Publish one batch; returns (rows published, whether publishing failed)."""
        async with self.sessions.begin() as session:
            rows = (
                await session.execute(
                    select(OutboxRow)
                    .where(OutboxRow.published_at.is_(None))
                    .order_by(OutboxRow.sequence)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
            done: list[int] = []
            failed: OutboxRow | None = None
            for row in rows:
                try:
                    await self.publish(Envelope.model_validate(row.envelope))
                except Exception as e:  # NATS away or slow: keep the order, try again later
                    log.warning("outbox relay: publishing %s failed (%s); will retry", row.event_id, e)
                    failed = row
                    break
                done.append(row.sequence)
            if done:
                await session.execute(
                    update(OutboxRow).where(OutboxRow.sequence.in_(done)).values(published_at=datetime.now(UTC))
                )
            if failed is not None:
                failed.attempts += 1
        return len(done), failed is not None

    async def run(self, stop: StopSignal) -> None:
        while not stop.stopped:
            published, failed = await self.drain_once()
            if failed:
                await stop.sleep(self.retry_interval_s)
            elif published < self.batch_size:
                await stop.sleep(self.poll_interval_s)
