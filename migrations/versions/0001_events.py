"""The events table (the SQL contract of docs/architecture.md), the log head and subscriber checkpoints.

Revision ID: 0001_events
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_events"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    # Text on SQLite (json_extract works on it), JSONB on PostgreSQL (->> works on it).
    return sa.Text().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("global_position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=False),
        sa.Column("stream_id", sa.String(255), nullable=False),
        sa.Column("stream_position", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("event_version", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
        sa.UniqueConstraint("stream_id", "stream_position", name="uq_events_stream"),
        sa.CheckConstraint("stream_position >= 1", name="ck_events_stream_position"),
    )
    op.create_index("ix_events_recorded_at", "events", ["recorded_at"])
    op.create_index("ix_events_event_type", "events", ["event_type"])
    head = op.create_table(
        "event_log_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_global_position", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "last_global_position": 0}])
    op.create_table(
        "event_checkpoints",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("global_position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("event_checkpoints")
    op.drop_table("event_log_head")
    op.drop_index("ix_events_event_type", table_name="events")
    op.drop_index("ix_events_recorded_at", table_name="events")
    op.drop_table("events")
