"""Compile jobs: what one builds (`JobSpec`), the key that makes two requests the same job, and its record.

A job goes QUEUED -> RUNNING -> SUCCEEDED | FAILED. Two requests whose specs and source content are equal are
one job: a second request while the first is queued, running or succeeded gets the first (a failed job can be
tried again). Pure: no database, no clock of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from cag.errors import InvalidFieldError


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


# States in which a job answers for every request of its key (a failed one does not: it may be retried).
HOLDS_ITS_KEY = (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything a compile depends on but the source's content (which the key adds)."""

    model: str
    tokenizer: str | None
    source_uri: str
    layout_json: str  # the layout itself, not where it was read from
    acl: str  # cag.compiler.request.AclSpec text: public | tenant:<t>[:<route>] | workspace:... | user:...
    tenant_id: str
    route: str | None
    parent_module_ids: tuple[str, ...] = ()
    dtype: str = "fp32"
    ttl_days: int | None = None
    created_at: str | None = None
    publish: bool = True
    keep_failed: bool = False

    def __post_init__(self) -> None:
        for name in ("model", "source_uri", "layout_json", "acl"):
            if not getattr(self, name):
                raise InvalidFieldError(name, "is required")

    def key(self, source_checksum: str) -> str:
        """Equal for two compiles that would build the same module the same way."""
        fields = dataclasses.asdict(self) | {"source_checksum": source_checksum}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        data["parent_module_ids"] = tuple(data.get("parent_module_ids", ()))
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class JobError:
    code: str  # gRPC status name, e.g. FAILED_PRECONDITION
    reason: str  # the error's reason, e.g. GOLDEN_TESTS_FAILED
    message: str


@dataclass(kw_only=True)
class Job:
    job_id: str
    key: str
    spec: JobSpec
    trigger: str  # "request", or the module event that started a recompile
    state: JobState = JobState.QUEUED
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    logs: list[str] = field(default_factory=list)
    module_id: str | None = None  # once SUCCEEDED
    error: JobError | None = None  # once FAILED


def new_job(spec: JobSpec, *, source_checksum: str, trigger: str, now: datetime) -> Job:
    return Job(job_id=str(uuid.uuid4()), key=spec.key(source_checksum), spec=spec, trigger=trigger, queued_at=now)
