"""The SQLAlchemy Core schema of the event store (the SQL contract of docs/architecture.md).

Alembic owns the real DDL (``migrations/versions``); this module describes the
same tables so that the store can build statements, and so that
``alembic revision --autogenerate`` can compare.

``payload`` and ``metadata`` hold JSON text that the codec already produced:
TEXT on SQLite (``json_extract`` works on it) and JSONB on PostgreSQL
(``->>`` works on it). ``RawJson`` passes the text through untouched in both
directions so no row is encoded or decoded twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine


class RawJson(TypeDecorator[str]):
    """JSON stored as text on SQLite and JSONB on PostgreSQL, bound and read as a JSON string."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_PgJsonText())
        return dialect.type_descriptor(Text())


class _PgJsonText(TypeDecorator[str]):
    """JSONB whose values travel as text: ``CAST(:param AS JSONB)`` in, ``column::text`` out."""

    impl = JSONB
    cache_ok = True

    def bind_expression(self, bindvalue: Any) -> Any:
        from sqlalchemy import cast

        return cast(bindvalue, JSONB)

    def column_expression(self, column: Any) -> Any:
        from sqlalchemy import cast

        return cast(column, Text)

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None

    def get_dbapi_type(self, dbapi: Any) -> Any:
        return None


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC timestamp with microseconds; always timezone-aware in Python.

    SQLite stores it as ``YYYY-MM-DD HH:MM:SS.ffffff`` text in UTC, which sorts
    correctly and works with the shell's date functions.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

PEER_MARKS_WHERE = "event_type IN ('ConnectionStateChanged', 'PathChosen', 'PathSwitched')"
NODE_ENDS_WHERE = "event_type IN ('NodeStopped', 'NodeRunEndedAbruptly')"

# SQLite needs exactly INTEGER (not BIGINT) for a rowid alias.
GlobalPosition = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("global_position", GlobalPosition, primary_key=True, autoincrement=False),
    Column("stream_id", String(255), nullable=False),
    Column("stream_position", Integer, nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("event_version", Integer, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("payload", RawJson, nullable=False),
    Column("metadata", RawJson, nullable=False),
    UniqueConstraint("stream_id", "stream_position", name="uq_events_stream"),
    Index("ix_events_recorded_at", "recorded_at"),
    Index("ix_events_event_type", "event_type"),
    # Only the events that set a connection's state or path (revision 0003): the views'
    # "state or path in effect" lookups probe it, and appends of other events never touch it.
    Index("ix_events_peer_marks", "stream_id", "stream_position",
          sqlite_where=text(PEER_MARKS_WHERE), postgresql_where=text(PEER_MARKS_WHERE)),
    # Only the ends of a node's runs (revision 0008): where a connection's period ended with its node.
    Index("ix_events_node_ends", "stream_id", "global_position",
          sqlite_where=text(NODE_ENDS_WHERE), postgresql_where=text(NODE_ENDS_WHERE)),
)

# One row (id = 1): the last global position handed out. Appenders lock this row
# (SQLite: the database write lock; PostgreSQL: SELECT ... FOR UPDATE), so global
# positions are assigned in commit order and a follower that reads up to N never
# later sees a new row below N. It also keeps positions from being reused after a
# retention policy deletes the newest rows.
log_head = Table(
    "event_log_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_global_position", BigInteger, nullable=False),
)

# Durable progress of named subscribers (projections, exporters, `events --follow`).
checkpoints = Table(
    "event_checkpoints",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("global_position", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Per-stream snapshots of a fold's state: a cache, never a source of truth. A row is used
# only when its ``fold_version`` matches the running code (``events.state_codec``); it can
# be dropped at any time and is rebuilt from the events.
snapshots = Table(
    "snapshots",
    metadata,
    Column("stream_id", String(255), primary_key=True),
    Column("stream_position", Integer, nullable=False),
    Column("fold_version", String(128), nullable=False),
    Column("state", Text, nullable=False),
    Column("saved_at", UtcDateTime, nullable=False),
)

# Retention's record per stream: every position above ``low_water_position`` is still
# stored; at or below it only the rows that retention must keep (state transitions, the
# samples that changed one) remain. Streams never pruned have no row.
low_water = Table(
    "stream_low_water",
    metadata,
    Column("stream_id", String(255), primary_key=True),
    Column("low_water_position", Integer, nullable=False),
    Column("pruned_rows", BigInteger, nullable=False),
    Column("pruned_before", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
