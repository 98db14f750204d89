"""Opening the store inside an actor's process, and one actor's writer of one stream.

Appends are idempotent: event ids are derived from the writer's incarnation and
the stream position, so thespian's retry of a message that raised re-appends the
same ids and gets the stored records back, while another incarnation writing at
the same position gets a ConcurrencyError (one writer per stream).
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from actors.messages import StoreSpec
from events.base import Event
from store.base import InMemoryRecorder, PendingEvent, RecordedEvent, Recorder
from store.snapshots import replay_stream

S = TypeVar("S")

_memory: dict[str, InMemoryRecorder] = {}
_opened: dict[tuple[int, str], Recorder] = {}
_NAMESPACE = uuid.UUID("6f1c1a52-3c55-4a4b-9d43-0c0ffee00003")
# Appends made in this process through each recorder (by id): the node's sign of life asks
# "did this node write anything lately" without reading the log (a shared PostgreSQL's
# global position moves with every node's writes).
_appends: dict[int, int] = {}


def appends_through(recorder: Recorder) -> int:
    """How many appends this process's writers made through ``recorder`` so far."""
    return _appends.get(id(recorder), 0)


def memory_recorder(name: str) -> InMemoryRecorder:
    """The process-wide in-memory recorder behind ``memory://NAME`` (tests, simple base)."""
    return _memory.setdefault(name, InMemoryRecorder())


def open_recorder(spec: StoreSpec, upgrade: bool = False) -> Recorder:
    """One recorder per URL and process; SQL URLs go through ``store.open_store``.

    Only the node actor, which starts first, brings the schema up to date
    (``upgrade=True``); the other actors skip alembic's check (memory and start-up time).
    """
    if spec.url.startswith("memory://"):
        return memory_recorder(spec.url.removeprefix("memory://"))
    key = (os.getpid(), spec.url)
    if key not in _opened:
        store: Any = importlib.import_module("store")
        _opened[key] = store.open_store(spec.url, upgrade=upgrade)
    return _opened[key]


class StreamWriter:
    """The single writer of one stream: replay, then append after the known position."""

    def __init__(self, recorder: Recorder, stream_id: str, incarnation: str,
                 metadata: dict[str, Any]) -> None:
        self.recorder = recorder
        self.stream_id = stream_id
        self.incarnation = incarnation
        self.metadata = metadata
        self.position = 0

    def replay(self, apply: Callable[[S, Event], S], state: S) -> S:
        """Fold the stream after the known position into ``state``.

        From the start, a snapshot of a pure fold of ``events.fold`` (``apply_party``...)
        stands in for the events it covers, and a long fold leaves a new one; any
        other ``apply`` (a closure that must see every event) folds every event.
        """
        state, self.position = replay_stream(self.recorder, self.stream_id, apply, state,
                                             after=self.position)
        return state

    def pending(self, events: Sequence[Event], causation: str) -> list[PendingEvent]:
        return [PendingEvent(event, {**self.metadata, "causation": causation},
                             uuid.uuid5(_NAMESPACE, f"{self.incarnation}/{self.stream_id}/"
                                                    f"{self.position + offset}").hex)
                for offset, event in enumerate(events, start=1)]

    def append(self, events: Sequence[Event], causation: str) -> list[RecordedEvent]:
        if not events:
            return []
        recorded = self.recorder.append(self.stream_id, self.pending(events, causation), self.position)
        self.position = recorded[-1].stream_position
        _appends[id(self.recorder)] = _appends.get(id(self.recorder), 0) + 1
        return recorded


def append_together(writes: Sequence[tuple[StreamWriter, Sequence[Event], str]]) -> list[list[RecordedEvent]]:
    """Facts that belong together, across streams, in one transaction (all writers share a recorder)."""
    recorder = writes[0][0].recorder
    recorded = recorder.append_many([(writer.stream_id, writer.pending(events, causation), writer.position)
                                     for writer, events, causation in writes])
    _appends[id(recorder)] = _appends.get(id(recorder), 0) + 1
    for (writer, _, _), records in zip(writes, recorded, strict=True):
        if records:
            writer.position = records[-1].stream_position
    return recorded


def read_tail(recorder: Recorder, stream_id: str, head: int,
              enough: Callable[[list[RecordedEvent]], bool]) -> list[RecordedEvent]:
    """The newest records of a stream, read back from ``head`` in growing spans until
    ``enough`` says they reach far enough (or the stream's start is reached)."""
    span = 32
    while head:
        start = max(1, head - span + 1)
        records = recorder.read_stream(stream_id, start)
        if start == 1 or not records or enough(records):
            return records
        span *= 4
    return []
