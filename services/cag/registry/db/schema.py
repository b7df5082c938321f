"""The registry's tables (SQLAlchemy 2 declarative). Alembic migrations create exactly these."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONB,
        list[Any]: JSONB,
        datetime: DateTime(timezone=True),
    }


class ModuleRow(Base):
    __tablename__ = "modules"
    module_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    source_uri: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(128))
    model_revision: Mapped[str] = mapped_column(String(64))
    tokenizer_revision: Mapped[str] = mapped_column(String(64))
    context_checksum: Mapped[str] = mapped_column(String(64))
    source_checksum: Mapped[str] = mapped_column(String(64))
    token_count: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(8))
    storage_uri: Mapped[str] = mapped_column(Text)
    acl_scope: Mapped[str] = mapped_column(String(16))
    acl_principal: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[str] = mapped_column(String(32))  # the module's date from its sources; "" when none
    expires_at: Mapped[datetime | None]
    layout_id: Mapped[str] = mapped_column(String(128))
    layout_hash: Mapped[str] = mapped_column(ForeignKey("layouts.layout_hash"))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("modules.module_id"))
    parent_chain_hash: Mapped[str | None] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64))
    engine_fingerprint: Mapped[str] = mapped_column(Text)
    golden_status: Mapped[str] = mapped_column(String(8))
    golden_results: Mapped[list[Any]]
    tensor_checksum: Mapped[str] = mapped_column(String(96))  # "blake3:<64 hex>"
    format_version: Mapped[str] = mapped_column(String(16))
    header_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    registered_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    published_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime] = mapped_column(server_default=text("now()"))

    __table_args__ = (
        UniqueConstraint("tenant_id", "route", "version", name="uq_modules_route_version"),
        Index("ix_modules_tenant_route", "tenant_id", "route"),
        Index("ix_modules_model", "model_name", "model_revision"),
        Index("ix_modules_tokenizer", "tokenizer_revision"),
        Index("ix_modules_source", "tenant_id", "source_uri"),
        Index("ix_modules_layout", "layout_id"),
        Index("ix_modules_parent", "parent_id"),
        Index("ix_modules_acl", "tenant_id", "acl_scope"),
        Index("ix_modules_expires", "expires_at", postgresql_where=text("expires_at IS NOT NULL")),
    )


class LayoutRow(Base):
    __tablename__ = "layouts"
    layout_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    layout_id: Mapped[str] = mapped_column(String(128))
    body: Mapped[dict[str, Any]]


class SourceRow(Base):
    __tablename__ = "sources"
    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    uri: Mapped[str] = mapped_column(Text, primary_key=True)
    checksum: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class ModelRevisionRow(Base):
    __tablename__ = "model_revisions"
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_revision: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokenizer_revision: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(server_default=text("now()"))


class RouteRow(Base):
    """The active (served) version of each route; Publish moves it forward, Rollback back."""

    __tablename__ = "routes"
    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    route: Mapped[str] = mapped_column(String(128), primary_key=True)
    active_module_id: Mapped[str] = mapped_column(ForeignKey("modules.module_id"))
    active_version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class RouteRuleSetRow(Base):
    """A tenant's route rules at one version (immutable; the newest version is in force)."""

    __tablename__ = "route_rule_sets"
    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[dict[str, Any]]  # {"rules": [...], "routes": [...]}
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class RouteDecisionRow(Base):
    """Audit of routing decisions, fed by `cag.route.decided` events."""

    __tablename__ = "route_decisions"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256), unique=True)
    request_id: Mapped[str] = mapped_column(String(128))
    tenant_id: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(16))
    module_ids: Mapped[list[Any]]
    module_version: Mapped[int | None] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    decided_at: Mapped[datetime]


class AuditRow(Base):
    """Who published, rolled back or invalidated what, why, when, under which event id (cag.registry.core.audit)."""

    __tablename__ = "audit_log"
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(Text)  # the authenticated caller's subject
    reason: Mapped[str] = mapped_column(Text, default="")
    tenant_id: Mapped[str] = mapped_column(String(128))  # "" when the change reaches every tenant
    route: Mapped[str] = mapped_column(String(128), default="")
    version: Mapped[int | None] = mapped_column(Integer)
    module_ids: Mapped[list[Any]]
    trigger: Mapped[str] = mapped_column(Text, default="")
    recorded_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    __table_args__ = (Index("ix_audit_log_tenant", "tenant_id", "sequence"), Index("ix_audit_log_event", "event_id"))


class OutboxRow(Base):
    """Events written in the same transaction as the state change they announce; a relay publishes them."""

    __tablename__ = "outbox"
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256), unique=True)
    subject: Mapped[str] = mapped_column(String(128))
    module_id: Mapped[str | None] = mapped_column(String(200))
    envelope: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    published_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (Index("ix_outbox_unpublished", "sequence", postgresql_where=text("published_at IS NULL")),)


class ProcessedEventRow(Base):
    """Idempotency: an event id is applied once per consumer, whatever the redeliveries."""

    __tablename__ = "processed_events"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
