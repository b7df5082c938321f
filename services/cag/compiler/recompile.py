"""Automatic recompilation: a module the registry marked stale or invalidated because its source, model,
tokenizer or layout changed, or that expired, is rebuilt and published by the compiler — when its route still
serves it (no newer version exists).

The registry decides which modules an invalidation reaches; the compiler follows its `cag.module.invalidated`
and `cag.module.expired` events (whose reason names the trigger's kind) rather than re-deriving that. Parents
come before children: a module whose parent is not published again yet is retried later (redelivery with
backoff) and then built on the new parent version. A recompile that fails (its golden questions, say) leaves the
route on the fallback path — the old version stays withdrawn — and emits `cag.compile.failed`. Replayed and
duplicate events find the job their first delivery started (same job key): one compile.
"""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from nats.js.api import DeliverPolicy

from cag.compiler.core import Job, JobSpec, JobState
from cag.compiler.runner import Compiler
from cag.errors import CagError, UnavailableError
from cag.events.bus import publish_event
from cag.events.consumer import EventConsumer, Redelivery, subscribe
from cag.events.schemas import CompileFailedV1, Envelope, ModuleEventV1, ModuleExpiredV1, ModuleInvalidatedV1
from cag.rpc.clients import AsyncRegistryClient
from cag.v1 import common_pb2, registry_pb2

log = logging.getLogger(__name__)

# Trigger kinds (the first word of the registry's reason) whose modules are rebuilt from the same inputs. An ACL
# change or a withdrawn parent is a person's decision: those modules are not rebuilt on their own.
REBUILT_KINDS = frozenset({"source", "model", "tokenizer", "layout"})
_SCOPE_TEXT = {
    common_pb2.ACL_SCOPE_PUBLIC: "public",
    common_pb2.ACL_SCOPE_TENANT: "tenant",
    common_pb2.ACL_SCOPE_WORKSPACE: "workspace",
    common_pb2.ACL_SCOPE_USER: "user",
}


def rebuilds(event: ModuleEventV1) -> bool:
    if event.state == "expired":
        return True
    return event.state in ("stale", "invalidated") and event.reason.split(":", 1)[0].strip() in REBUILT_KINDS


def acl_of(module: common_pb2.Module) -> str:
    scope = _SCOPE_TEXT[module.acl_scope]
    if scope == "public":
        return "public"
    return f"{scope}:{module.tenant_id}" + (f":{module.acl_principal}" if module.acl_principal else "")


class Recompiler:
    def __init__(self, compiler: Compiler, registry: AsyncRegistryClient, broker: NatsBroker) -> None:
        self._compiler, self._registry, self._broker = compiler, registry, broker
        self._origins: dict[str, ModuleEventV1] = {}  # job id -> the event that started it
        self._trigger_ids: dict[str, str] = {}  # job id -> that event's id
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_module_event(self, envelope: Envelope, event: ModuleEventV1) -> None:
        if not rebuilds(event):
            log.info(
                "%s %s: %s is not rebuilt (%s)", envelope.subject, envelope.event_id, event.module_id, event.reason
            )
            return
        module = await self._registry.get(event.module_id)
        if not await self._still_routed(module):
            log.info("%s: %s has a newer version on its route: not rebuilt", envelope.event_id, event.module_id)
            return
        parents = await self._current_parents(module)  # UnavailableError: retried once the parent is back
        spec = JobSpec(
            model=module.model_name,
            tokenizer=None,
            source_uri=module.source_uri,
            layout_json=module.layout,
            acl=acl_of(module),
            tenant_id=module.tenant_id,
            route=module.route,
            parent_module_ids=parents,
            dtype=module.dtype,
            publish=True,
        )
        try:
            job, created = await self._compiler.submit(spec, trigger=f"{envelope.subject} {envelope.event_id}")
        except CagError as e:  # the source is gone or unreadable: no compile can run, say so
            await self._failed(event, envelope.event_id, job_id="-", reason=str(e))
            return
        if created:
            self._origins[job.job_id] = event
            self._trigger_ids[job.job_id] = envelope.event_id
        log.info(
            "%s: %s rebuilt by job %s%s",
            envelope.event_id,
            event.module_id,
            job.job_id,
            "" if created else " (already)",
        )

    def job_finished(self, job: Job) -> None:
        """The compiler's callback: a failed recompile is announced."""
        event = self._origins.pop(job.job_id, None)
        trigger = self._trigger_ids.pop(job.job_id, "")
        if event is None or job.state is not JobState.FAILED:
            return
        reason = job.error.message if job.error else "failed"
        task = asyncio.create_task(self._failed(event, trigger, job_id=job.job_id, reason=reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _failed(self, event: ModuleEventV1, trigger_id: str, *, job_id: str, reason: str) -> None:
        failed = CompileFailedV1(
            module_id=event.module_id,
            tenant_id=event.tenant_id,
            route=event.route,
            job_id=job_id,
            reason=reason[:1000],
            trigger_event_id=trigger_id,
        )
        try:
            await publish_event(self._broker, Envelope.wrap(failed))
        except Exception:
            log.exception("could not publish cag.compile.failed for %s", event.module_id)

    async def _still_routed(self, module: common_pb2.Module) -> bool:
        """True when no module of the route has a newer version (or one being built after it)."""
        request = registry_pb2.ListModulesRequest(tenant_id=module.tenant_id, route=module.route)
        async for other in self._registry.list_all(request):
            if other.module_id != module.module_id and other.version > module.version:
                return False
        return True

    async def _current_parents(self, module: common_pb2.Module) -> tuple[str, ...]:
        """The chain to build on: each parent's route as published now, root first."""
        if not module.parent_id:
            return ()
        parent = await self._registry.get(module.parent_id)
        resolved = await self._registry.resolve_route(parent.tenant_id, parent.route)
        chain = list(resolved.chain)
        if not chain or chain[-1].state != common_pb2.MODULE_STATE_PUBLISHED:
            raise UnavailableError(f"parent route {parent.tenant_id}/{parent.route} is not published yet")
        return tuple(m.module_id for m in chain)


def subscribe_recompiles(broker: NatsBroker, recompiler: Recompiler, group: str, redelivery: Redelivery) -> None:
    """One durable per subject shared by every compiler replica of `group`: each event is handled once."""
    for payload in (ModuleInvalidatedV1, ModuleExpiredV1):
        subscribe(
            broker,
            EventConsumer(
                name=f"{group}-{payload.subject.rpartition('.')[2]}",
                subject=payload.subject,
                accepts=(payload,),
                handle=recompiler.on_module_event,
                redelivery=redelivery,
                deliver_policy=DeliverPolicy.NEW,
            ),
        )
