"""What a cache-pool replica announces about itself: the modules it holds (by tier), its load, where it listens.

Each replica puts one document under its own id in a JetStream key-value bucket (cag.events.replica_bucket) when
what it holds changes and as a heartbeat; routers watch the bucket to route each request to the replica holding
its chain. The bucket is not on a `cag.*` subject: the platform's event stream captures those, and an
announcement is state, not an event to keep. A document comes from another process: routers parse it with
`parse_announcement`, which refuses (None, and a log line) anything oversized, malformed or filed under
another replica's key, so that one bad replica can only lose its own routing.
"""

from __future__ import annotations

import logging
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from cag.events.schemas import ModuleId

log = logging.getLogger(__name__)

BUCKET = "cag_replicas"
# A replica holding this many modules is far beyond one machine's tiers; the cap bounds what a router parses.
MAX_ANNOUNCED_MODULES = 20_000
MAX_ANNOUNCEMENT_BYTES = 2 * 1024 * 1024
REPLICA_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
ADDRESS = r"^(\[[0-9a-fA-F:.]{2,45}\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):[0-9]{1,5}$"

ReplicaId = Annotated[str, Field(strict=True, pattern=f"^{REPLICA_ID.pattern}$", max_length=64)]
Address = Annotated[str, Field(strict=True, pattern=ADDRESS, max_length=260)]
Count = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]


class ResidentTier(StrEnum):
    """The cache tiers a replica holds modules in, fastest first (cachepool.proto's Tier, less the origin)."""

    ENGINE = "ENGINE"
    HOST_RAM = "HOST_RAM"
    LOCAL_DISK = "LOCAL_DISK"


class AnnouncedModule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    module_id: ModuleId
    tier: ResidentTier  # the fastest tier holding it


class ReplicaAnnouncementV1(BaseModel):
    """One replica's state as of `sent_at`; `sequence` grows with every document the replica process puts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    replica_id: ReplicaId
    address: Address
    modules: Annotated[list[AnnouncedModule], Field(max_length=MAX_ANNOUNCED_MODULES)] = []
    queued: Count = 0
    running: Count = 0
    # Requests the replica runs at once (its engine slots): the load a router weighs is (queued + running) / this.
    capacity: Annotated[int, Field(strict=True, ge=1, le=100_000)]
    bytes_per_tier: dict[ResidentTier, Annotated[int, Field(strict=True, ge=0)]] = {}
    sequence: Annotated[int, Field(strict=True, ge=0)]
    sent_at: AwareDatetime

    def tiers(self) -> dict[str, ResidentTier]:
        """module id → the fastest tier holding it."""
        return {m.module_id: m.tier for m in self.modules}


def check_replica_id(value: str) -> str:
    """A replica id fit for a bucket key: 1-64 of [a-z0-9_-], starting alphanumeric (ValueError otherwise)."""
    if not REPLICA_ID.fullmatch(value):
        raise ValueError(f"replica id {value[:80]!r} is malformed: use 1-64 of [a-z0-9_-], starting alphanumeric")
    return value


def parse_announcement(key: str, raw: bytes) -> ReplicaAnnouncementV1 | None:
    """The document stored under `key`, or None (logged) when it is oversized, malformed, of an unknown
    schema version, or names a replica other than its key."""
    if len(raw) > MAX_ANNOUNCEMENT_BYTES:
        log.warning(
            "replica announcement under %r ignored: %d bytes (at most %d)", key, len(raw), MAX_ANNOUNCEMENT_BYTES
        )
        return None
    try:
        document = ReplicaAnnouncementV1.model_validate_json(raw)
    except ValidationError as e:
        log.warning("replica announcement under %r ignored: %s", key[:80], _first_error(e))
        return None
    if document.replica_id != key:
        log.warning("replica announcement under %r ignored: it names replica %r", key[:80], document.replica_id)
        return None
    return document


def _first_error(error: ValidationError) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "document"
    return f"{where}: {first['msg']} ({error.error_count()} error(s))"
