"""The event store: SQLAlchemy schema, append/read/follow, migrations, replay.

``open_store(url)`` is the entry point: it brings the schema to the head
revision (alembic) and returns an ``EventStore`` implementing
``store.base.Recorder``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from store.base import (
    ConcurrencyError,
    InMemoryRecorder,
    PendingEvent,
    RecordedEvent,
    Recorder,
    StoreError,
)
from store.engine import Synchronous, parse_url
from store.errors import (
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseUnavailable,
    DiskFull,
    EventDecodeError,
    ReadOnlyStatement,
    SchemaMissing,
)
from store.migrate import is_current, migrate
from store.sql import EventStore


def open_store(url: str, synchronous: Synchronous = "NORMAL", *, busy_timeout: float = 5.0,
               metadata: Mapping[str, Any] | None = None, readonly: bool = False,
               upgrade: bool = True) -> EventStore:
    """Open (and, unless ``readonly`` or ``upgrade=False``, create or upgrade) the store at ``url``.

    ``metadata`` is merged into every appended event's metadata (e.g. ``{"node_id": ...}``).
    A read-only store never creates anything: a missing SQLite file is an error naming it.
    """
    target = parse_url(url)
    if not readonly and upgrade and not is_current(target):
        migrate(target)
    return EventStore(url, synchronous=synchronous, busy_timeout=busy_timeout, metadata=metadata,
                      readonly=readonly)


__all__ = [
    "ConcurrencyError", "DatabaseLocked", "DatabaseReadOnly", "DatabaseUnavailable", "DiskFull",
    "EventDecodeError", "EventStore", "InMemoryRecorder", "PendingEvent", "ReadOnlyStatement",
    "RecordedEvent", "Recorder", "SchemaMissing", "StoreError", "migrate", "open_store",
]
