"""The SQL event store: SQLAlchemy 2 Core, synchronous, SQLite or PostgreSQL.

Writes go through one writer connection with group commit: each ``append``
queues a request; whichever caller takes the commit lock first becomes the
leader, drains the queue and commits every waiting request in one
transaction (one fsync). Positions are checked in memory, request by request,
in queue order, so one stale ``expected_position`` fails only its own request
and never the rest of the batch. Reads use their own pool of connections;
with WAL they never wait for the writer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from events.base import Event
from store.base import ConcurrencyError, PendingEvent, RecordedEvent, StoreError, as_pending
from store.codec import encode_metadata, encode_payload
from store.engine import Synchronous, Target, check_sqlite_file, parse_url, sync_engine
from store.errors import EventDecodeError, translated
from store.queries import HEAD_QUERY, EventFilter, OnError, RowReader, page_query, stream_query, utc
from store.schema import checkpoints, events, log_head

_INSERT = insert(events)
_SET_HEAD = update(log_head).where(log_head.c.id == 1)


@dataclass
class _Request:
    stream_id: str
    pending: list[PendingEvent]
    expected: int
    done: bool = False
    result: list[RecordedEvent] = field(default_factory=list)
    error: BaseException | None = None


class EventStore:
    """Implements ``store.base.Recorder`` on a SQL database. Thread-safe."""

    def __init__(self, url: str, *, synchronous: Synchronous = "NORMAL", busy_timeout: float = 5.0,
                 metadata: Mapping[str, Any] | None = None, readonly: bool = False,
                 must_exist: bool = False, page_size: int = 2000) -> None:
        self.target: Target = parse_url(url)
        self.readonly = readonly
        self.synchronous = synchronous
        self.page_size = page_size
        self._default_metadata = dict(metadata or {})
        if self.target.dialect == "sqlite":
            check_sqlite_file(self.target, must_exist=must_exist or readonly)
        self._reader = sync_engine(self.target, role="reader", synchronous=synchronous,
                                   busy_timeout=busy_timeout, readonly=readonly)
        self._writer_engine = None if readonly else sync_engine(
            self.target, role="writer", synchronous=synchronous, busy_timeout=busy_timeout)
        self._writer: Connection | None = None
        self._commit_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []
        self._last_recorded: datetime | None = None
        self._closed = False
        # The last batch sizes, for the benchmark and tests of group commit.
        self.batches: list[int] = []

    @property
    def where(self) -> str:
        return self.target.where

    @property
    def dialect(self) -> str:
        return self.target.dialect

    @property
    def reader_engine(self):  # type: ignore[no-untyped-def]
        return self._reader

    # ------------------------------------------------------------------ writing

    def append(self, stream_id: str, events_: Sequence[PendingEvent | Event],
               expected_position: int) -> list[RecordedEvent]:
        """Append after ``expected_position`` (0 for a new stream), atomically.

        Raises ConcurrencyError if the stream is elsewhere, unless the very same
        events (by ``event_id``) already sit at those positions: then the stored
        records are returned, so a retried persist is harmless.
        """
        if self.readonly:
            raise StoreError(f"database {self.where} was opened read-only")
        if not isinstance(stream_id, str) or not stream_id:
            raise StoreError("stream_id must be a non-empty string")
        if expected_position < 0:
            raise StoreError(f"expected_position must be >= 0, not {expected_position}")
        pending = [as_pending(item) for item in events_]
        for item in pending:
            if not isinstance(item.event, Event):
                raise StoreError(f"not an event: {item.event!r}")
        request = _Request(stream_id, pending, expected_position)
        with self._queue_lock:
            self._queue.append(request)
        with self._commit_lock:
            if not request.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _connection(self) -> Connection:
        if self._closed:
            raise StoreError(f"store {self.where} is closed")
        if self._writer is None or self._writer.invalidated or self._writer.closed:
            assert self._writer_engine is not None
            self._writer = self._writer_engine.connect()
        return self._writer

    def _commit(self, batch: list[_Request]) -> None:
        self.batches.append(len(batch))
        if len(self.batches) > 1000:
            del self.batches[:500]
        try:
            with translated(self.where):
                connection = self._connection()
                try:
                    with connection.begin():
                        rows = self._stage(connection, batch)
                        if rows:
                            connection.execute(_INSERT, rows)
                            last = rows[-1]["global_position"]
                            connection.execute(_SET_HEAD, {"last_global_position": last})
                except BaseException:
                    self._drop_connection_if_broken()
                    raise
        except BaseException as error:
            for request in batch:
                if request.error is None:
                    request.error = error
                    request.result = []
        finally:
            for request in batch:
                request.done = True
        if any(request.error is None and request.result for request in batch):
            last = max(r.result[-1].recorded_at for r in batch if r.error is None and r.result)
            self._last_recorded = last

    def _drop_connection_if_broken(self) -> None:
        if self._writer is not None and self._writer.invalidated:
            self._writer.close()
            self._writer = None

    def _stage(self, connection: Connection, batch: list[_Request]) -> list[dict[str, Any]]:
        if self.dialect == "postgresql":
            head = connection.execute(HEAD_QUERY.with_for_update()).scalar_one()
        else:
            head = connection.execute(HEAD_QUERY).scalar_one()
        if self._last_recorded is None:
            latest = connection.execute(select(func.max(events.c.recorded_at))).scalar()
            self._last_recorded = latest or datetime.min.replace(tzinfo=UTC)
        now = max(datetime.now(UTC), self._last_recorded)
        positions: dict[str, int] = {}
        staged: dict[str, list[RecordedEvent]] = {}
        rows: list[dict[str, Any]] = []
        for request in batch:
            stream_id = request.stream_id
            current = positions.get(stream_id)
            if current is None:
                current = connection.execute(
                    select(func.coalesce(func.max(events.c.stream_position), 0))
                    .where(events.c.stream_id == stream_id)).scalar_one()
            if request.expected < current and request.pending:
                existing = self._existing(connection, stream_id, request, staged.get(stream_id, []))
                if existing is not None:
                    request.result = existing
                    positions[stream_id] = current
                    continue
            if request.expected != current:
                request.error = ConcurrencyError(stream_id, request.expected, current)
                positions[stream_id] = current
                continue
            recorded = []
            for item in request.pending:
                head += 1
                current += 1
                meta = {**self._default_metadata, **item.metadata, "event_id": item.event_id}
                rows.append({"global_position": head, "stream_id": stream_id, "stream_position": current,
                             "event_type": item.event.event_type, "event_version": type(item.event).version,
                             "recorded_at": now, "payload": encode_payload(item.event),
                             "metadata": encode_metadata(meta)})
                recorded.append(RecordedEvent(global_position=head, stream_id=stream_id,
                                              stream_position=current, recorded_at=now,
                                              event=item.event, metadata=meta))
            positions[stream_id] = current
            staged.setdefault(stream_id, []).extend(recorded)
            request.result = recorded
        return rows

    def _existing(self, connection: Connection, stream_id: str, request: _Request,
                  staged: list[RecordedEvent]) -> list[RecordedEvent] | None:
        """The stored records at the request's positions, if they carry the same event ids."""
        first = request.expected + 1
        last = request.expected + len(request.pending)
        reader = RowReader("raise")
        found = {r.stream_position: r for r in staged if first <= r.stream_position <= last}
        for row in connection.execute(stream_query(stream_id, first, last)):
            record = reader.record(row)
            assert record is not None
            found[record.stream_position] = record
        records = [found.get(position) for position in range(first, last + 1)]
        ids = [record.event_id if record else None for record in records]
        if ids == [item.event_id for item in request.pending]:
            return [record for record in records if record is not None]
        return None

    # ------------------------------------------------------------------ reading

    def read_stream(self, stream_id: str, from_position: int = 1, *,
                    on_error: OnError = "raise") -> list[RecordedEvent]:
        reader = RowReader(on_error)
        with translated(self.where), self._reader.connect() as connection:
            rows = connection.execute(stream_query(stream_id, max(from_position, 1))).all()
        return [record for row in rows if (record := reader.record(row)) is not None]

    def read_all(self, after_global: int = 0, limit: int | None = None, *, stream: str | None = None,
                 types: Sequence[str] = (), since: datetime | None = None, until: datetime | None = None,
                 upto: int | None = None, on_error: OnError = "raise") -> Iterator[RecordedEvent]:
        """Events after ``after_global`` in global order, in pages; filters combine with AND.

        ``stream`` is a stream id or prefix, ``types`` event type names, ``since``/``until``
        an inclusive range of ``recorded_at``, ``upto`` the last global position wanted.
        With ``on_error="skip"`` (or a callable, which is called with each error) a row
        that cannot be decoded is reported and skipped instead of raised.
        """
        selection = EventFilter(stream, tuple(types), since, until)
        reader = RowReader(on_error)
        return self._pages(after_global, limit, selection, upto, reader)

    def _pages(self, after: int, limit: int | None, selection: EventFilter, upto: int | None,
               reader: RowReader) -> Iterator[RecordedEvent]:
        remaining = limit
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            with translated(self.where), self._reader.connect() as connection:
                rows = connection.execute(page_query(after, upto, size, selection)).all()
            for row in rows:
                record = reader.record(row)
                if record is not None:
                    if remaining is not None:
                        remaining -= 1
                    yield record
            if len(rows) < size:
                return
            after = rows[-1][0]

    def follow(self, after_global: int = 0, *, poll_interval: float = 0.25,
               stop: threading.Event | None = None, checkpoint: str | None = None,
               stream: str | None = None, types: Sequence[str] = (),
               on_error: OnError = "skip") -> Iterator[RecordedEvent]:
        """Yield every event after ``after_global``, then new ones as they are committed.

        Polls with a checkpoint: each query reads the log head first and then only
        rows up to it, so rows that the filters drop are not scanned again, and
        (appends being serialised on the head row) no committed row is ever skipped.
        With ``checkpoint`` the start comes from, and progress goes to, that
        named checkpoint. Ends when ``stop`` is set.
        """
        selection = EventFilter(stream, tuple(types))
        reader = RowReader(on_error)
        position = self.load_checkpoint(checkpoint) if checkpoint else after_global
        saved = position
        while stop is None or not stop.is_set():
            with translated(self.where), self._reader.connect() as connection:
                head = connection.execute(HEAD_QUERY).scalar_one()
                rows = connection.execute(page_query(position, head, self.page_size, selection)).all()
            for row in rows:
                record = reader.record(row)
                position = row[0]
                if record is not None:
                    yield record
                if stop is not None and stop.is_set():
                    break
            if len(rows) < self.page_size:
                position = max(position, head)
            if checkpoint and position != saved:
                self.save_checkpoint(checkpoint, position)
                saved = position
            if len(rows) < self.page_size:
                if stop is not None:
                    stop.wait(poll_interval)
                else:
                    time.sleep(poll_interval)

    def stream_position(self, stream_id: str) -> int:
        with translated(self.where), self._reader.connect() as connection:
            return int(connection.execute(
                select(func.coalesce(func.max(events.c.stream_position), 0))
                .where(events.c.stream_id == stream_id)).scalar_one())

    def last_global_position(self) -> int:
        with translated(self.where), self._reader.connect() as connection:
            return int(connection.execute(HEAD_QUERY).scalar_one())

    def position_at(self, moment: datetime) -> int:
        """The last global position recorded at or before ``moment`` (0 if none)."""
        with translated(self.where), self._reader.connect() as connection:
            return int(connection.execute(
                select(func.coalesce(func.max(events.c.global_position), 0))
                .where(events.c.recorded_at <= utc(moment))).scalar_one())

    def streams(self, prefix: str = "") -> list[str]:
        query = select(events.c.stream_id).distinct().order_by(events.c.stream_id)
        if prefix:
            query = query.where(events.c.stream_id.like(prefix.replace("%", "\\%").replace("_", "\\_") + "%",
                                                        escape="\\"))
        with translated(self.where), self._reader.connect() as connection:
            return list(connection.execute(query).scalars())

    # ------------------------------------------------------------------ checkpoints

    def load_checkpoint(self, name: str) -> int:
        with translated(self.where), self._reader.connect() as connection:
            value = connection.execute(select(checkpoints.c.global_position)
                                       .where(checkpoints.c.name == name)).scalar()
        return int(value or 0)

    def save_checkpoint(self, name: str, position: int) -> None:
        if self.readonly:
            raise StoreError(f"database {self.where} was opened read-only")
        with self._commit_lock, translated(self.where):
            connection = self._connection()
            with connection.begin():
                now = datetime.now(UTC)
                changed = connection.execute(
                    update(checkpoints).where(checkpoints.c.name == name)
                    .values(global_position=position, updated_at=now)).rowcount
                if not changed:
                    connection.execute(insert(checkpoints).values(name=name, global_position=position,
                                                                  updated_at=now))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._commit_lock:
            self._closed = True
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._writer_engine is not None:
                self._writer_engine.dispose()
            self._reader.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["EventDecodeError", "EventFilter", "EventStore"]
