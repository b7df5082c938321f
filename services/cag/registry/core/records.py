"""What the registry knows about a module: its file metadata plus lifecycle fields the registry owns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cag.metadata import ModuleMetadata
from cag.registry.core.states import ModuleState


@dataclass(frozen=True, kw_only=True)
class ModuleRecord:
    metadata: ModuleMetadata
    source_uri: str
    state: ModuleState
    storage_uri: str = ""  # where the module file lives (file://, s3://): a registry fact, not in the file
    header_sha256: str = ""  # the file's header checksum; with metadata.tensor_checksum it pins the file
    state_reason: str = ""
    version: int | None = None  # assigned when first published, per tenant + route
    registered_at: datetime | None = None
    published_at: datetime | None = None
    state_changed_at: datetime | None = None

    @property
    def module_id(self) -> str:
        return self.metadata.module_id

    @property
    def parent_id(self) -> str | None:
        return self.metadata.parent_id


@dataclass(frozen=True, kw_only=True)
class RouteDecision:
    """One routing decision, as the router announced it (the audit trail of which module answered)."""

    event_id: str
    request_id: str
    tenant_id: str
    route: str
    path: str  # "module" or "fallback"
    module_ids: tuple[str, ...]
    module_version: int | None
    rule: str
    confidence: float
    reason: str
    decided_at: datetime


@dataclass(frozen=True, kw_only=True)
class ModuleChange:
    """One entry of the registry's ordered change feed (what Watch streams)."""

    sequence: int
    event_id: str
    subject: str
    reason: str
    module_id: str
    tenant_id: str
    route: str
    version: int | None
    state: ModuleState
    occurred_at: datetime
