"""The registry's rules on top of a store: what may be registered, published, invalidated, rolled back.

Pure of gRPC and NATS: the servicer and the event handlers are thin adapters over this.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from cag.errors import CagError, InvalidInputError, Status
from cag.identifiers import check_module_id, check_name
from cag.kvmodule import GoldenStatus, ModuleFile, ModuleMetadata
from cag.registry.records import ModuleChange, ModuleRecord, RouteDecision
from cag.registry.states import ModuleState
from cag.registry.store import ListQuery, RegistryStore, RouteResolution
from cag.registry.triggers import Trigger

ModuleVerifier = Callable[[ModuleRecord], None]


class PublishRefusedError(CagError):
    status = Status.FAILED_PRECONDITION


def local_path(storage_uri: str) -> Path:
    """The file behind a `file://` URI or a plain path; other schemes are not reachable from here."""
    parsed = urlparse(storage_uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else storage_uri)
    raise PublishRefusedError(f"cannot verify {storage_uri}: only file:// and local paths are reachable")


def verify_module_file(record: ModuleRecord) -> None:
    """The file at storage_uri must verify and be the module that was registered."""
    module = ModuleFile.open(local_path(record.metadata.storage_uri))
    module.verify()
    if module.metadata.tensor_checksum != record.metadata.tensor_checksum:
        raise PublishRefusedError(f"the file at {record.metadata.storage_uri} is not module {record.module_id}")


class RegistryCore:
    def __init__(self, store: RegistryStore, verifier: ModuleVerifier = verify_module_file) -> None:
        self.store = store
        self.verifier = verifier

    async def register(self, metadata: ModuleMetadata, source_uri: str) -> ModuleRecord:
        check_module_id(metadata.module_id)
        check_name("tenant_id", metadata.tenant_id)
        check_name("route", metadata.route)
        if metadata.parent_id is not None:
            check_module_id(metadata.parent_id)
        if not source_uri:
            raise InvalidInputError("source_uri is required: invalidation by source needs to know where it came from")
        record = ModuleRecord(metadata=metadata, source_uri=source_uri, state=ModuleState.VALIDATING)
        return await self.store.register(record)

    async def get(self, module_id: str) -> ModuleRecord:
        return await self.store.get(check_module_id(module_id))

    async def list_modules(self, query: ListQuery) -> tuple[list[ModuleRecord], str]:
        return await self.store.list_modules(query)

    async def publish(self, module_id: str, *, expected_version: int | None = None) -> ModuleRecord:
        record = await self.get(module_id)
        if record.state is ModuleState.PUBLISHED:
            return record
        if record.metadata.golden_status is not GoldenStatus.PASSED:
            raise PublishRefusedError(
                f"module {module_id} cannot be published: golden tests {record.metadata.golden_status.value}"
                " (publishing needs passed golden results)"
            )
        try:
            await asyncio.to_thread(self.verifier, record)
        except CagError as e:
            if e.status is Status.DATA_LOSS:  # the bytes are bad: never serve this module
                await self.store.quarantine(module_id, f"checksum failed at publish: {e}")
            raise PublishRefusedError(f"module {module_id} cannot be published: {e}") from e
        return await self.store.publish(module_id, expected_version=expected_version)

    async def resolve_route(self, tenant_id: str, route: str) -> RouteResolution:
        resolution = await self.store.resolve_route(check_name("tenant_id", tenant_id), check_name("route", route))
        unservable = [r for r in resolution.chain if r.state is not ModuleState.PUBLISHED]
        if unservable:
            bad = unservable[0]
            raise PublishRefusedError(
                f"route {tenant_id}/{route} v{resolution.version}: module {bad.module_id} is {bad.state.value}"
                f" ({bad.state_reason}); serve from fallback until it is rebuilt"
            )
        return resolution

    async def invalidate(self, trigger: Trigger, *, event_id: str | None = None) -> tuple[str, list[ModuleRecord]]:
        event = event_id or str(uuid.uuid4())
        return event, await self.store.invalidate(trigger, event_id=event)

    async def rollback(self, tenant_id: str, route: str, to_version: int) -> ModuleRecord:
        return await self.store.rollback(check_name("tenant_id", tenant_id), check_name("route", route), to_version)

    async def record_route_decision(self, decision: RouteDecision) -> bool:
        return await self.store.record_route_decision(decision)

    async def changes_since(
        self, sequence: int, *, tenant_id: str | None = None, limit: int = 100
    ) -> list[ModuleChange]:
        if sequence < 0:
            raise InvalidInputError(f"since_sequence must be >= 0, got {sequence}")
        return await self.store.changes_since(sequence, tenant_id=tenant_id, limit=limit)
