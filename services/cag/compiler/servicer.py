"""The compiler's gRPC adapter: Compile (a job, its progress streamed), GetJob, ListJobs.

A Compile request is checked at the edge (every field named when wrong), becomes a job spec and is submitted;
the stream begins with the job id whatever happens next, so a client that disconnects can find the job again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from cag.acl import AclScope
from cag.auth import Scope
from cag.canonical.uris import local_path
from cag.compiler.core import Job, JobSpec, JobState
from cag.compiler.jobstore import JobStore
from cag.compiler.request import AclSpec
from cag.compiler.runner import Compiler
from cag.errors import CagError, InvalidFieldError, UnknownJobError
from cag.layout import layout_json, load_layout
from cag.metadata import DTYPE_NAMES
from cag.objectstore.sources import check_source_root, check_source_uri
from cag.rpc.auth import current_caller
from cag.rpc.timestamps import datetime_of, timestamp_of
from cag.source_roots import SourceRoots
from cag.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc

if TYPE_CHECKING:
    import grpc

    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = compiler_pb2.DESCRIPTOR.services_by_name["CompilerService"].full_name
POLL_S = 0.5  # how often a job another compiler replica runs is looked up while a client follows it
MAX_URI = 4096
MAX_PARENTS = 8
DEFAULT_LIST = 100

_SCOPES = {
    common_pb2.ACL_SCOPE_PUBLIC: AclScope.PUBLIC,
    common_pb2.ACL_SCOPE_TENANT: AclScope.TENANT,
    common_pb2.ACL_SCOPE_WORKSPACE: AclScope.WORKSPACE,
    common_pb2.ACL_SCOPE_USER: AclScope.USER,
}
_STATES = {
    JobState.QUEUED: compiler_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: compiler_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: compiler_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: compiler_pb2.JOB_STATE_FAILED,
}


def spec_of(request: compiler_pb2.CompileRequest) -> JobSpec:
    """The job a Compile request asks for; InvalidFieldError naming the first field that is wrong."""
    for name in ("model", "source_uri", "layout_uri"):
        value = getattr(request, name)
        if not value:
            raise InvalidFieldError(name, "is required")
        if len(value) > MAX_URI or "\x00" in value:
            raise InvalidFieldError(name, f"must be at most {MAX_URI} characters without NUL")
    check_source_uri(request.source_uri)
    layout = load_layout(local_path(request.layout_uri, "layout_uri"))
    if request.dtype and request.dtype not in DTYPE_NAMES:
        raise InvalidFieldError("dtype", f"{request.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    if request.ttl_days < 0:
        raise InvalidFieldError("ttl_days", "must be >= 0")
    if len(request.parent_module_ids) > MAX_PARENTS:
        raise InvalidFieldError("parent_module_ids", f"at most {MAX_PARENTS} parents")
    acl = acl_text(request.acl)
    return JobSpec(
        model=request.model,
        tokenizer=request.tokenizer or None,
        source_uri=request.source_uri,
        layout_json=layout_json(layout),
        acl=acl,
        tenant_id=AclSpec.parse(acl).tenant_id,
        route=request.route or None,
        parent_module_ids=tuple(request.parent_module_ids),
        dtype=request.dtype or "fp32",
        ttl_days=request.ttl_days or None,
        created_at=datetime_of(request.created_at).isoformat() if request.HasField("created_at") else None,
        publish=request.publish,
        keep_failed=request.keep_failed,
    )


def acl_text(acl: common_pb2.Acl) -> str:
    scope = _SCOPES.get(acl.scope)
    if scope is None:
        raise InvalidFieldError("acl.scope", "must be PUBLIC, TENANT, WORKSPACE or USER")
    if scope is AclScope.PUBLIC:
        return "public"
    text = f"{scope.value}:{acl.tenant_id}" + (f":{acl.principal}" if acl.principal else "")
    try:
        AclSpec.parse(text)
    except CagError as e:
        raise InvalidFieldError("acl", str(e)) from None
    return text


def job_message(job: Job, module: bytes | None = None) -> compiler_pb2.Job:
    message = compiler_pb2.Job(
        job_id=job.job_id,
        state=_STATES[job.state],
        started_at=timestamp_of(job.started_at),
        finished_at=timestamp_of(job.finished_at),
        queued_at=timestamp_of(job.queued_at),
        tenant_id=job.spec.tenant_id,
        route=job.spec.route or "",
        source_uri=job.spec.source_uri,
        trigger=job.trigger,
        logs=job.logs,
    )
    if module:
        message.module.ParseFromString(module)
    if job.error is not None:
        message.error.CopyFrom(compiler_pb2.JobError(code=job.error.code, message=job.error.message))
        message.error.info.reason = job.error.reason
    return message


class CompilerServicer(compiler_pb2_grpc.CompilerServiceServicer):
    """`source_roots`: where each tenant's sources may be read from (cag.source_roots); None: anywhere."""

    def __init__(self, compiler: Compiler, store: JobStore, source_roots: SourceRoots | None = None) -> None:
        self._compiler, self._store, self._source_roots = compiler, store, source_roots

    @override
    async def Compile(
        self, request: compiler_pb2.CompileRequest, context: Context
    ) -> AsyncIterator[compiler_pb2.CompileProgress]:
        caller = current_caller()
        spec = spec_of(request)
        caller.require(Scope.WRITE, spec.tenant_id)
        if self._source_roots is not None:
            check_source_root(spec.source_uri, spec.tenant_id, self._source_roots)
        job, _ = await self._compiler.submit(spec, trigger="request")
        yield compiler_pb2.CompileProgress(job_id=job.job_id)
        feed = self._compiler.feed(job.job_id)
        if feed is not None:
            async for message in feed.follow():
                if isinstance(message, CagError):
                    raise message
                if message.WhichOneof("event") != "job_id":
                    yield message
            return
        # Finished before we looked, or run by another replica: its record tells.
        while True:
            found = await self._store.get(job.job_id)
            assert found is not None
            stored, module = found
            if stored.state is JobState.SUCCEEDED and module:
                yield compiler_pb2.CompileProgress(finished=job_message(stored, module).module)
                return
            if stored.state is JobState.FAILED and stored.error is not None:
                raise CagError(stored.error.message)
            await asyncio.sleep(POLL_S)

    @override
    async def GetJob(self, request: compiler_pb2.GetJobRequest, context: Context) -> compiler_pb2.Job:
        caller = current_caller()
        found = await self._store.get(request.job_id) if request.job_id else None
        if found is None or not caller.may(Scope.READ, found[0].spec.tenant_id):
            raise UnknownJobError(f"no compile job {request.job_id!r}")
        return job_message(*found)

    @override
    async def ListJobs(self, request: compiler_pb2.ListJobsRequest, context: Context) -> compiler_pb2.ListJobsResponse:
        caller = current_caller()
        if not 0 <= request.limit <= 500:
            raise InvalidFieldError("limit", "must be in 1..500 (0: 100)")
        state = None if request.state == compiler_pb2.JOB_STATE_UNSPECIFIED else _state_of(request.state)
        readable = caller.readable_tenants()
        if request.tenant_id:
            caller.require(Scope.READ, request.tenant_id)
            readable = frozenset({request.tenant_id})
        jobs = await self._store.recent(
            state=state, tenants=set(readable) if readable is not None else None, limit=request.limit or DEFAULT_LIST
        )
        return compiler_pb2.ListJobsResponse(jobs=[job_message(job, module) for job, module in jobs])


def _state_of(value: int) -> JobState:
    for state, proto in _STATES.items():
        if proto == value:
            return state
    raise InvalidFieldError("state", f"unknown job state {value}")
