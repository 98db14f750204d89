"""The recorder interface every event store implements, and an in-memory one.

``append`` is atomic per call, checks the expected stream position, and is
idempotent: re-appending events whose ``event_id`` already sits at those
positions returns the stored records instead of raising. Thespian retries a
message that raised once, so an actor may persist the same events twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from events.base import Event


class StoreError(Exception):
    """Base of every error the store raises."""


class ConcurrencyError(StoreError):
    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at position {actual}, but the append expected {expected}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


def new_event_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class PendingEvent:
    """An event about to be appended, with its metadata (node, actor, causation, correlation)."""

    event: Event
    metadata: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=new_event_id)


@dataclass(frozen=True)
class RecordedEvent:
    global_position: int
    stream_id: str
    stream_position: int
    recorded_at: datetime
    event: Event
    metadata: Mapping[str, Any]

    @property
    def event_type(self) -> str:
        return self.event.event_type

    @property
    def event_id(self) -> str:
        return str(self.metadata.get("event_id", ""))


class Recorder(Protocol):
    def append(self, stream_id: str, events: Sequence[PendingEvent | Event],
               expected_position: int) -> list[RecordedEvent]:
        """Append after ``expected_position`` (0 for a new stream); raise ConcurrencyError."""
        ...

    def read_stream(self, stream_id: str, from_position: int = 1) -> list[RecordedEvent]: ...

    def read_all(self, after_global: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        ...

    def stream_position(self, stream_id: str) -> int: ...

    def last_global_position(self) -> int: ...

    def close(self) -> None: ...


def as_pending(item: PendingEvent | Event) -> PendingEvent:
    return item if isinstance(item, PendingEvent) else PendingEvent(item)


class InMemoryRecorder:
    """A thread-safe recorder in memory: for fast actor tests, same contract as SQL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}

    def append(self, stream_id: str, events: Sequence[PendingEvent | Event],
               expected_position: int) -> list[RecordedEvent]:
        pending = [as_pending(item) for item in events]
        with self._lock:
            stream = self._streams.setdefault(stream_id, [])
            existing = stream[expected_position:expected_position + len(pending)]
            if existing and [r.event_id for r in existing] == [p.event_id for p in pending]:
                return list(existing)
            if len(stream) != expected_position:
                raise ConcurrencyError(stream_id, expected_position, len(stream))
            now = datetime.now(UTC)
            recorded = []
            for offset, item in enumerate(pending, start=1):
                record = RecordedEvent(
                    global_position=len(self._log) + 1, stream_id=stream_id,
                    stream_position=expected_position + offset, recorded_at=now,
                    event=item.event, metadata={**item.metadata, "event_id": item.event_id})
                self._log.append(record)
                stream.append(record)
                recorded.append(record)
            return recorded

    def read_stream(self, stream_id: str, from_position: int = 1) -> list[RecordedEvent]:
        with self._lock:
            return list(self._streams.get(stream_id, [])[max(from_position, 1) - 1:])

    def read_all(self, after_global: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        with self._lock:
            records = self._log[after_global:]
        return iter(records[:limit] if limit is not None else records)

    def stream_position(self, stream_id: str) -> int:
        with self._lock:
            return len(self._streams.get(stream_id, []))

    def last_global_position(self) -> int:
        with self._lock:
            return len(self._log)

    def close(self) -> None:
        pass
