"""The TTL job: expire modules whose expires_at has passed (each run is one idempotent trigger)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

from cag.registry.core import RegistryCore
from cag.registry.records import ModuleRecord
from cag.registry.triggers import TtlElapsed

log = logging.getLogger(__name__)


async def expire_due(core: RegistryCore, now: datetime | None = None) -> list[ModuleRecord]:
    moment = now or datetime.now(UTC)
    _, expired = await core.invalidate(TtlElapsed(now=moment), event_id=f"ttl-{uuid.uuid4()}")
    if expired:
        log.info("expired %d module(s)", len(expired))
    return expired


async def run_ttl_job(core: RegistryCore, interval_s: float) -> None:
    while True:
        await expire_due(core)
        await asyncio.sleep(interval_s)
