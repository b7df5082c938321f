"""What `cag top` shows, as plain values: each replica's Stats (or why it did not answer), the platform's recent
module and compile events, and the compiler's recent jobs. Built from Stats responses, event bodies and ListJobs
answers; no I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from cag.events.schemas import (
    CompileFailedV1,
    Envelope,
    ModuleEventV1,
    ModuleExpiredV1,
    ModuleInvalidatedV1,
    ModulePublishedV1,
    Payload,
    UnknownSchemaError,
    decode,
)
from cag.v1 import cachepool_pb2, common_pb2, compiler_pb2

# The cache tiers a replica holds modules in, fastest first, as `cag top` names them.
CACHE_TIERS = {
    common_pb2.TIER_ENGINE: "engine",
    common_pb2.TIER_HOST_RAM: "host_ram",
    common_pb2.TIER_LOCAL_DISK: "local_disk",
}
# Subjects of the events shown: module publishes, invalidations and expiries, and compile failures (a recompile
# that succeeds shows as the publish of the new version).
EVENT_SUBJECTS = ("cag.module.>", "cag.compile.>")
EVENT_KINDS: dict[type[Payload], str] = {
    ModulePublishedV1: "published",
    ModuleInvalidatedV1: "invalidated",
    ModuleExpiredV1: "expired",
    CompileFailedV1: "compile failed",
}


# The most of a reason or an error one line of the view shows.
MAX_DETAIL_CHARS = 240


def one_line(text: str) -> str:
    """`text` on one line (a reason may quote a multi-line error), at most MAX_DETAIL_CHARS long."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_DETAIL_CHARS else flat[: MAX_DETAIL_CHARS - 1] + "…"


@dataclass(frozen=True, kw_only=True)
class ReplicaTarget:
    """A cache-pool replica to watch: the name its source knows it by, and where it listens (host:port)."""

    name: str
    address: str


@dataclass(frozen=True, kw_only=True)
class TierUse:
    tier: str  # a CACHE_TIERS name
    modules: int
    bytes: int
    capacity_bytes: int
    hits: int  # lookups this tier answered
    misses: int  # lookups that found the module only in a slower tier, or nowhere


@dataclass(frozen=True, kw_only=True)
class ReplicaView:
    """One replica as of its last Stats; `error` says why it is down ("" when it answered)."""

    target: ReplicaTarget
    error: str = ""
    replica_id: str = ""  # the replica's own name for itself (its instance)
    tiers: tuple[TierUse, ...] = ()
    origin_loads: int = 0  # lookups no cache tier answered: the module came from its origin
    queued: int = 0
    running: int = 0
    invalidations: int = 0
    ttft_p50_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    ttft_samples: int = 0
    ttft_window_s: float = 0.0

    @property
    def up(self) -> bool:
        return not self.error

    @property
    def hits(self) -> int:
        """Lookups a cache tier answered (each lookup is answered by one tier, or by the origin)."""
        return sum(t.hits for t in self.tiers)

    @property
    def misses(self) -> int:
        """Lookups no cache tier answered."""
        return self.origin_loads

    def tier(self, name: str) -> TierUse | None:
        return next((t for t in self.tiers if t.tier == name), None)


def replica_view(target: ReplicaTarget, stats: cachepool_pb2.StatsResponse) -> ReplicaView:
    tiers = tuple(
        TierUse(
            tier=CACHE_TIERS[t.tier],
            modules=t.modules,
            bytes=t.bytes,
            capacity_bytes=t.capacity_bytes,
            hits=t.hits,
            misses=t.misses,
        )
        for t in stats.tiers
        if t.tier in CACHE_TIERS
    )
    return ReplicaView(
        target=target,
        replica_id=stats.replica_id,
        tiers=tiers,
        origin_loads=sum(t.hits for t in stats.tiers if t.tier == common_pb2.TIER_ORIGIN),
        queued=stats.queued,
        running=stats.running,
        invalidations=stats.invalidations,
        ttft_p50_ms=stats.ttft_p50_ms,
        ttft_p99_ms=stats.ttft_p99_ms,
        ttft_samples=stats.ttft_samples,
        ttft_window_s=stats.ttft_window_s,
    )


def replica_down(target: ReplicaTarget, reason: str) -> ReplicaView:
    return ReplicaView(target=target, error=one_line(reason) or "no answer")


@dataclass(frozen=True, kw_only=True)
class RecentEvent:
    at: datetime  # when it happened (the envelope's occurred_at)
    kind: str  # an EVENT_KINDS value
    module_id: str
    detail: str  # route and version, state and reason, or why a compile failed


def recent_event(body: bytes) -> RecentEvent | None:
    """A message body of the event stream as `cag top` lists it; None for events it does not show or cannot read
    (malformed, or of a schema this build does not know)."""
    try:
        envelope = Envelope.model_validate_json(body)
        payload = decode(envelope)
    except (UnknownSchemaError, ValidationError):
        return None
    kind = EVENT_KINDS.get(type(payload))
    if kind is None:
        return None
    if isinstance(payload, CompileFailedV1):
        detail = f"{payload.tenant_id}/{payload.route} job {payload.job_id}: {payload.reason}"
    else:
        assert isinstance(payload, ModuleEventV1)
        version = f" v{payload.version}" if payload.version else ""
        reason = f" ({payload.reason})" if payload.reason else ""
        detail = f"{payload.tenant_id}/{payload.route}{version} {payload.state}{reason}"
    return RecentEvent(at=envelope.occurred_at, kind=kind, module_id=payload.module_id, detail=one_line(detail))


class EventRing:
    """The latest `capacity` events shown, in arrival order; older ones fall off."""

    def __init__(self, capacity: int) -> None:
        self._events: deque[RecentEvent] = deque(maxlen=capacity)

    def add(self, events: Iterable[RecentEvent]) -> None:
        self._events.extend(events)

    def newest_first(self) -> tuple[RecentEvent, ...]:
        return tuple(reversed(self._events))


@dataclass(frozen=True, kw_only=True)
class CompileJob:
    """One of the compiler's recent jobs (ListJobs)."""

    job_id: str
    state: str  # queued | running | succeeded | failed
    queued_at: datetime
    tenant_id: str
    route: str
    trigger: str  # "request" (Compile) or the module event that started a rebuild
    module_id: str = ""  # once succeeded
    took_s: float | None = None  # from its start to its end, once finished
    error: str = ""  # once failed


def compile_job(job: compiler_pb2.Job) -> CompileJob:
    took = None
    if job.HasField("started_at") and job.HasField("finished_at"):
        took = (job.finished_at.ToDatetime() - job.started_at.ToDatetime()).total_seconds()
    return CompileJob(
        job_id=job.job_id,
        state=compiler_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower(),
        queued_at=job.queued_at.ToDatetime(tzinfo=UTC),
        tenant_id=job.tenant_id,
        route=job.route,
        trigger=job.trigger,
        module_id=job.module.module_id,
        took_s=took,
        error=one_line(f"{job.error.code}: {job.error.message}") if job.HasField("error") else "",
    )


@dataclass(frozen=True, kw_only=True)
class TopSnapshot:
    """One frame: every replica, the recent events newest first, the compiler's recent jobs, and why any of them
    may be missing ("" when nothing is)."""

    taken_at: datetime
    replicas: tuple[ReplicaView, ...]
    events: tuple[RecentEvent, ...]
    replicas_error: str = ""
    events_error: str = ""
    # The compiler's recent jobs, newest first, when a compiler is known (`compiler`: its address, "" when none is).
    compiler: str = ""
    compiles: tuple[CompileJob, ...] = ()
    compiles_error: str = ""
