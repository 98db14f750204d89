"""The recorder interface every event store implements, and an in-memory one.

``append`` is atomic per call, checks the expected stream position, and is
idempotent: re-appending events whose ``event_id`` already sits at those
positions returns the stored records instead of raising. Thespian retries a
message that raised once, so an actor may persist the same events twice.
``append_many`` does the same for several streams in one transaction: facts
that belong together (an intent on one stream, its effect on another) are
stored together or not at all.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

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

    def append_many(self, writes: Sequence[tuple[str, Sequence[PendingEvent | Event], int]]
                    ) -> list[list[RecordedEvent]]:
        """``(stream_id, events, expected_position)`` appends, all in one transaction.

        Every write is checked as ``append`` checks it; one conflict raises the
        ConcurrencyError naming its stream and stores nothing of the call.
        Returns the records of each write, in the order given.
        """
        ...

    def read_stream(self, stream_id: str, from_position: int = 1) -> list[RecordedEvent]: ...

    def read_all(self, after_global: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        ...

    def stream_position(self, stream_id: str) -> int: ...

    def last_global_position(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    """A fold's state of one stream after ``stream_position``, as ``events.state_codec`` wrote it."""

    stream_id: str
    stream_position: int
    fold_version: str
    state: str


@runtime_checkable
class SnapshotKeeper(Protocol):
    """A recorder that also keeps per-stream snapshots (a cache: losing them loses nothing)."""

    def load_snapshot(self, stream_id: str) -> Snapshot | None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...

    def drop_snapshots(self) -> int:
        """Forget every snapshot; returns how many there were."""
        ...


def as_pending(item: PendingEvent | Event) -> PendingEvent:
    return item if isinstance(item, PendingEvent) else PendingEvent(item)


class InMemoryRecorder:
    """A thread-safe recorder in memory: for fast actor tests, same contract as SQL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._snapshots: dict[str, Snapshot] = {}

    def append(self, stream_id: str, events: Sequence[PendingEvent | Event],
               expected_position: int) -> list[RecordedEvent]:
        return self.append_many([(stream_id, events, expected_position)])[0]

    def append_many(self, writes: Sequence[tuple[str, Sequence[PendingEvent | Event], int]]
                    ) -> list[list[RecordedEvent]]:
        parts = [(stream_id, [as_pending(item) for item in events], expected)
                 for stream_id, events, expected in writes]
        with self._lock:
            # Check every write first (against the positions the earlier writes leave), then store.
            lengths: dict[str, int] = {}
            plan: list[tuple[str, list[PendingEvent], int, list[RecordedEvent] | None]] = []
            for stream_id, pending, expected in parts:
                stream = self._streams.get(stream_id, [])
                length = lengths.get(stream_id, len(stream))
                existing = stream[expected:expected + len(pending)]
                if existing and [r.event_id for r in existing] == [p.event_id for p in pending]:
                    plan.append((stream_id, pending, expected, list(existing)))
                    continue
                if length != expected:
                    raise ConcurrencyError(stream_id, expected, length)
                lengths[stream_id] = expected + len(pending)
                plan.append((stream_id, pending, expected, None))
            now = datetime.now(UTC)
            results: list[list[RecordedEvent]] = []
            for stream_id, pending, expected, existing in plan:
                if existing is not None:
                    results.append(existing)
                    continue
                stream = self._streams.setdefault(stream_id, [])
                recorded = []
                for offset, item in enumerate(pending, start=1):
                    record = RecordedEvent(
                        global_position=len(self._log) + 1, stream_id=stream_id,
                        stream_position=expected + offset, recorded_at=now,
                        event=item.event, metadata={**item.metadata, "event_id": item.event_id})
                    self._log.append(record)
                    stream.append(record)
                    recorded.append(record)
                results.append(recorded)
            return results

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

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(stream_id)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshots[snapshot.stream_id] = snapshot

    def drop_snapshots(self) -> int:
        with self._lock:
            count = len(self._snapshots)
            self._snapshots.clear()
            return count

    def close(self) -> None:
        pass
