"""Compile jobs in Postgres (the registry's database, a table of the compiler's own).

One row per job. A partial unique index on the job key over the jobs that are not FAILED makes "the same job
requested twice runs once" hold across requests, events and compiler replicas: the second insert of a live key
fails and the caller gets the job that holds it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cag.compiler.core import Job, JobError, JobSpec, JobState

metadata = MetaData()
jobs = Table(
    "compile_jobs",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("job_key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("spec", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("tenant_id", String(128), nullable=False),
    Column("route", String(128), nullable=False),
    Column("source_uri", Text, nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("logs", JSONB, nullable=False),
    Column("module_id", String(200)),
    Column("module", LargeBinary),  # the registered module (cag.v1.Module, serialized) once SUCCEEDED
    Column("error_code", String(32)),
    Column("error_reason", String(64)),
    Column("error_message", Text),
    Index("compile_jobs_live_key", "job_key", unique=True, postgresql_where=text("state <> 'failed'")),
    Index("compile_jobs_queued_at", "queued_at"),
)
MAX_LIST = 500


class JobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create_tables(self) -> None:
        """Idempotent: the table and its indexes are created when missing."""
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)

    async def add(self, job: Job) -> tuple[Job, bool]:
        """The job inserted (True), or the live job that already holds its key (False)."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(jobs).values(**_row(job)))
            return job, True
        except IntegrityError:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(select(jobs).where(jobs.c.job_key == job.key, jobs.c.state != "failed"))
                ).first()
            if row is None:  # the holder failed in between: try once more
                return await self.add(job)
            return _job(row._mapping), False

    async def save(self, job: Job, module: bytes | None = None) -> None:
        values: dict[str, object] = {
            "state": job.state.value,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "logs": job.logs,
            "module_id": job.module_id,
            "error_code": job.error.code if job.error else None,
            "error_reason": job.error.reason if job.error else None,
            "error_message": job.error.message if job.error else None,
        }
        if module is not None:
            values["module"] = module
        async with self._engine.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.job_id == job.job_id).values(**values))

    async def get(self, job_id: str) -> tuple[Job, bytes | None] | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).first()
        return None if row is None else (_job(row._mapping), row._mapping["module"])

    async def recent(
        self, *, state: JobState | None, tenants: set[str] | None, limit: int
    ) -> list[tuple[Job, bytes | None]]:
        """Jobs with their registered module, newest first; `tenants` None: every tenant."""
        query = select(jobs).order_by(jobs.c.queued_at.desc()).limit(min(limit, MAX_LIST))
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        if tenants is not None:
            query = query.where(jobs.c.tenant_id.in_(sorted(tenants)))
        async with self._engine.connect() as conn:
            return [(_job(r._mapping), r._mapping["module"]) for r in (await conn.execute(query)).all()]

    async def unfinished(self) -> list[Job]:
        """Jobs a compiler that stopped left queued or running, oldest first."""
        query = select(jobs).where(jobs.c.state.in_(["queued", "running"])).order_by(jobs.c.queued_at)
        async with self._engine.connect() as conn:
            return [_job(r._mapping) for r in (await conn.execute(query)).all()]


def _row(job: Job) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "job_key": job.key,
        "state": job.state.value,
        "spec": job.spec.to_json(),
        "trigger": job.trigger,
        "tenant_id": job.spec.tenant_id,
        "route": job.spec.route or "",
        "source_uri": job.spec.source_uri,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "logs": job.logs,
        "module_id": job.module_id,
    }


def _job(row: object) -> Job:
    r = dict(row)  # type: ignore[call-overload]
    error = (
        JobError(code=r["error_code"], reason=r["error_reason"] or "", message=r["error_message"] or "")
        if r["error_code"]
        else None
    )
    started: datetime | None = r["started_at"]
    return Job(
        job_id=r["job_id"],
        key=r["job_key"],
        spec=JobSpec.from_json(r["spec"]),
        trigger=r["trigger"],
        state=JobState(r["state"]),
        queued_at=r["queued_at"],
        started_at=started,
        finished_at=r["finished_at"],
        logs=list(r["logs"]),
        module_id=r["module_id"],
        error=error,
    )
