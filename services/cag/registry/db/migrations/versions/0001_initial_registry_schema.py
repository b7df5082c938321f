"""initial registry schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 14:41:03.823091
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "layouts",
        sa.Column("layout_hash", sa.String(length=64), nullable=False),
        sa.Column("layout_id", sa.String(length=128), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("layout_hash"),
    )
    op.create_table(
        "model_revisions",
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_revision", sa.String(length=64), nullable=False),
        sa.Column("tokenizer_revision", sa.String(length=64), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("model_name", "model_revision"),
    )
    op.create_table(
        "outbox",
        sa.Column("sequence", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("module_id", sa.String(length=200), nullable=True),
        sa.Column("envelope", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["sequence"], unique=False, postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )
    op.create_table(
        "route_decisions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=16), nullable=False),
        sa.Column("module_ids", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("module_version", sa.Integer(), nullable=True),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_table(
        "route_rules",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rule", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "route", "version", name="uq_route_rules_version"),
    )
    op.create_table(
        "sources",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "uri"),
    )
    op.create_table(
        "modules",
        sa.Column("module_id", sa.String(length=200), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_revision", sa.String(length=64), nullable=False),
        sa.Column("tokenizer_revision", sa.String(length=64), nullable=False),
        sa.Column("context_checksum", sa.String(length=64), nullable=False),
        sa.Column("source_checksum", sa.String(length=64), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=8), nullable=False),
        sa.Column("storage_uri", sa.Text(), nullable=False),
        sa.Column("acl_scope", sa.String(length=16), nullable=False),
        sa.Column("acl_principal", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("layout_id", sa.String(length=128), nullable=False),
        sa.Column("layout_hash", sa.String(length=64), nullable=False),
        sa.Column("parent_id", sa.String(length=200), nullable=True),
        sa.Column("parent_chain_hash", sa.String(length=64), nullable=True),
        sa.Column("chain_hash", sa.String(length=64), nullable=False),
        sa.Column("engine_fingerprint", sa.Text(), nullable=False),
        sa.Column("golden_status", sa.String(length=8), nullable=False),
        sa.Column("golden_results", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("tensor_checksum", sa.String(length=96), nullable=False),
        sa.Column("format_version", sa.String(length=16), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["layout_hash"],
            ["layouts.layout_hash"],
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["modules.module_id"],
        ),
        sa.PrimaryKeyConstraint("module_id"),
        sa.UniqueConstraint("tenant_id", "route", "version", name="uq_modules_route_version"),
    )
    op.create_index("ix_modules_acl", "modules", ["tenant_id", "acl_scope"], unique=False)
    op.create_index(
        "ix_modules_expires",
        "modules",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index("ix_modules_layout", "modules", ["layout_id"], unique=False)
    op.create_index("ix_modules_model", "modules", ["model_name", "model_revision"], unique=False)
    op.create_index("ix_modules_parent", "modules", ["parent_id"], unique=False)
    op.create_index("ix_modules_source", "modules", ["tenant_id", "source_uri"], unique=False)
    op.create_index("ix_modules_tenant_route", "modules", ["tenant_id", "route"], unique=False)
    op.create_index("ix_modules_tokenizer", "modules", ["tokenizer_revision"], unique=False)
    op.create_table(
        "routes",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("active_module_id", sa.String(length=200), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["active_module_id"],
            ["modules.module_id"],
        ),
        sa.PrimaryKeyConstraint("tenant_id", "route"),
    )


def downgrade() -> None:
    op.drop_table("routes")
    op.drop_index("ix_modules_tokenizer", table_name="modules")
    op.drop_index("ix_modules_tenant_route", table_name="modules")
    op.drop_index("ix_modules_source", table_name="modules")
    op.drop_index("ix_modules_parent", table_name="modules")
    op.drop_index("ix_modules_model", table_name="modules")
    op.drop_index("ix_modules_layout", table_name="modules")
    op.drop_index("ix_modules_expires", table_name="modules", postgresql_where=sa.text("expires_at IS NOT NULL"))
    op.drop_index("ix_modules_acl", table_name="modules")
    op.drop_table("modules")
    op.drop_table("sources")
    op.drop_table("route_rules")
    op.drop_table("route_decisions")
    op.drop_table("processed_events")
    op.drop_index("ix_outbox_unpublished", table_name="outbox", postgresql_where=sa.text("published_at IS NULL"))
    op.drop_table("outbox")
    op.drop_table("model_revisions")
    op.drop_table("layouts")
    op.drop_table("dead_letters")
