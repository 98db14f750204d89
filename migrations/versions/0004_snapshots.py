"""Per-stream snapshots of fold states: a cache beside the events, droppable at any time.

Revision ID: 0004_snapshots
Revises: 0003_node_streams
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_snapshots"
down_revision: str | None = "0003_node_streams"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("stream_id", sa.String(255), primary_key=True),
        sa.Column("stream_position", sa.Integer(), nullable=False),
        sa.Column("fold_version", sa.String(128), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
