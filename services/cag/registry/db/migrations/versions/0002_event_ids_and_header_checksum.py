"""event ids up to 256 characters (the documented limit); modules record their header checksum

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 20:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# An event id longer than its column failed the handler, which was redelivered forever.
EVENT_ID_TABLES = ("processed_events", "outbox", "route_decisions", "dead_letters")


def upgrade() -> None:
    for table in EVENT_ID_TABLES:
        op.alter_column(table, "event_id", type_=sa.String(length=256), existing_nullable=False)
    op.add_column("modules", sa.Column("header_sha256", sa.String(length=64), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("modules", "header_sha256")
    for table in EVENT_ID_TABLES:
        op.alter_column(table, "event_id", type_=sa.String(length=64), existing_nullable=False)
