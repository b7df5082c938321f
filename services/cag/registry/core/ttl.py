"""The TTL job: expire modules whose expires_at has passed (each run is one idempotent trigger)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from cag.auth.caller import SYSTEM
from cag.lifecycle import StopSignal
from cag.registry.core import RegistryCore
from cag.registry.core.records import ModuleRecord
from cag.registry.core.triggers import TtlElapsed

log = logging.getLogger(__name__)


async def expire_due(core: RegistryCore, now: datetime | None = None) -> list[ModuleRecord]:
    moment = now or datetime.now(UTC)
    _, expired = await core.invalidate(SYSTEM, TtlElapsed(now=moment), event_id=f"ttl-{uuid.uuid4()}")
    if expired:
        log.info("expired %d module(s)", len(expired))
    return expired


async def run_ttl_job(core: RegistryCore, interval_s: float, stop: StopSignal) -> None:
    while not stop.stopped:
        await expire_due(core)
        await stop.sleep(interval_s)
