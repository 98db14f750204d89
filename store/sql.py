"""The SQL event store: SQLAlchemy 2 Core, synchronous, SQLite or PostgreSQL.

Writes go through one writer connection with group commit: each ``append``
encodes its events and queues a request; one caller at a time leads, takes the
whole queue and commits every waiting request in one transaction (one fsync),
then wakes those it committed and hands the lead to the next waiter. Positions
are checked in memory, request by request, in queue order, so one stale
``expected_position`` fails only its own request and never the rest of the
batch. An ``append_many`` is one request with a part per stream: its parts are
checked together and join the batch only if every one fits, so facts that
belong together are stored together or not at all. Reads use their own pool of
connections; with WAL they never wait for the writer. Hot paths use the DBAPI
cursor with per-dialect SQL.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from events.base import Event
from store.base import ConcurrencyError, PendingEvent, RecordedEvent, Snapshot, StoreError
from store.codec import encode_flat, encode_metadata, encode_payload, is_plain
from store.engine import Synchronous, Target, check_sqlite_file, parse_url, sync_engine
from store.errors import EventDecodeError, translated
from store.queries import HEAD_QUERY, EventFilter, OnError, RowReader, utc
from store.schema import checkpoints, events, snapshots


class _Sql:
    """The writer's statements for one dialect, run on the DBAPI cursor (no per-row Core overhead)."""

    def __init__(self, dialect: str) -> None:
        mark = "%s" if dialect == "postgresql" else "?"
        self.mark = mark
        json = f"CAST({mark} AS JSONB)" if dialect == "postgresql" else mark
        # psycopg turns JSONB into dicts itself; the decoder takes dicts as well as text.
        self.columns = ("SELECT global_position, stream_id, stream_position, recorded_at, event_type,"
                        " event_version, payload, metadata FROM events")
        self.begin = "BEGIN IMMEDIATE" if dialect == "sqlite" else ""
        # FOR UPDATE serialises PostgreSQL appenders on the head row until commit, so
        # global positions become visible in order; SQLite's write lock does the same.
        self.head = "SELECT last_global_position FROM event_log_head WHERE id = 1" + (
            " FOR UPDATE" if dialect == "postgresql" else "")
        self.latest = "SELECT MAX(recorded_at) FROM events"
        self.stream_max = f"SELECT COALESCE(MAX(stream_position), 0) FROM events WHERE stream_id = {mark}"
        self.stream_range = (
            "SELECT global_position, stream_id, stream_position, recorded_at, event_type, event_version, "
            + ("payload::text, metadata::text" if dialect == "postgresql" else "payload, metadata")
            + f" FROM events WHERE stream_id = {mark} AND stream_position BETWEEN {mark} AND {mark}"
            " ORDER BY stream_position")
        self.insert = (
            "INSERT INTO events (global_position, stream_id, stream_position, event_type, event_version,"
            f" recorded_at, payload, metadata) VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, {mark},"
            f" {json}, {json})")
        self.set_head = f"UPDATE event_log_head SET last_global_position = {mark} WHERE id = 1"
        self.checkpoint_update = (f"UPDATE event_checkpoints SET global_position = {mark},"
                                  f" updated_at = {mark} WHERE name = {mark}")
        self.checkpoint_insert = (f"INSERT INTO event_checkpoints (name, global_position, updated_at)"
                                  f" VALUES ({mark}, {mark}, {mark})")
        self.snapshot_update = (f"UPDATE snapshots SET stream_position = {mark}, fold_version = {mark},"
                                f" state = {mark}, saved_at = {mark} WHERE stream_id = {mark}")
        self.snapshot_insert = (f"INSERT INTO snapshots (stream_position, fold_version, state, saved_at,"
                                f" stream_id) VALUES ({mark}, {mark}, {mark}, {mark}, {mark})")


# A stored state longer than this is not one of ours (a party of 250 members is ~100 kB).
MAX_SNAPSHOT_CHARS = 8 * 1024 * 1024

_new, _set = object.__new__, object.__setattr__
# Event classes whose instances encode straight from __dict__ (filled on first sight).
_FLAT_EVENTS: dict[type, bool] = {}
# RecordedEvent built without its frozen __init__ on the append path (same object).
_FAST_RECORD = is_plain(RecordedEvent)


def _sqlite_time(moment: datetime) -> str:
    """UTC as SQLAlchemy's SQLite DateTime stores it (and ten times faster than strftime)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _close_quietly(resource: Any) -> None:
    with contextlib.suppress(Exception):
        resource.close()


# (event, payload JSON, metadata with event_id, metadata JSON)
_Pending = tuple[Event, str, dict[str, Any], str]


# SQLite and psycopg connections must not be used across fork (thespian forks actor
# processes): a child gets fresh connections on first use.
_open_stores: weakref.WeakSet[EventStore] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for store in list(_open_stores):
        store._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


@dataclass
class _Part:
    """One stream's share of an append: its encoded events and the position it expects."""

    stream_id: str
    pending: list[_Pending]
    expected: int


@dataclass
class _Request:
    """One caller's append (one part) or append_many (several), committed all or nothing."""

    parts: list[_Part]
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)
    result: list[list[RecordedEvent]] = field(default_factory=list)
    error: BaseException | None = None


class EventStore:
    """Implements ``store.base.Recorder`` on a SQL database. Thread-safe."""

    def __init__(self, url: str, *, synchronous: Synchronous = "NORMAL", busy_timeout: float = 5.0,
                 metadata: Mapping[str, Any] | None = None, readonly: bool = False,
                 must_exist: bool = False, page_size: int = 2000,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.target: Target = parse_url(url)
        self.readonly = readonly
        self.synchronous = synchronous
        self.page_size = page_size
        # What ``recorded_at`` is taken from (never earlier than the newest row): the wall
        # clock, or a simulated one (bench/log.py writes a year in minutes).
        self._clock = clock or _utc_now
        self._default_metadata = {key: value for key, value in (metadata or {}).items() if key != "event_id"}
        encoded = encode_metadata(self._default_metadata)
        self._metadata_prefix = encoded[:-1] + ("," if self._default_metadata else "")
        if self.target.dialect == "sqlite":
            check_sqlite_file(self.target, must_exist=must_exist or readonly)
        self._reader = sync_engine(self.target, role="reader", synchronous=synchronous,
                                   busy_timeout=busy_timeout, readonly=readonly)
        self._writer_engine = None if readonly else sync_engine(
            self.target, role="writer", synchronous=synchronous, busy_timeout=busy_timeout)
        self._writer: Any = None
        self._sql = _Sql(self.target.dialect)
        self._commit_lock = threading.Lock()  # the writer connection, one user at a time
        self._turn = threading.Lock()  # guards _queue and _leading
        self._leading = False
        self._queue: list[_Request] = []
        self._last_recorded: datetime | None = None
        # Stream positions as of log head ``_known_head``; valid only while nobody else has
        # appended, which the head read under the write lock tells us.
        self._positions: dict[str, int] = {}
        self._known_head: int | None = None
        self._closed = False
        # How many batches one leader commits in a row before handing over.
        self.lead_rounds = 4
        # The last batch sizes, for the benchmark and tests of group commit.
        self.batches: list[int] = []
        _open_stores.add(self)

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
        return self._submit([self._part(stream_id, events_, expected_position)])[0]

    def append_many(self, writes: Sequence[tuple[str, Sequence[PendingEvent | Event], int]]
                    ) -> list[list[RecordedEvent]]:
        """Several streams' appends in one transaction: all are stored, or none.

        Each ``(stream_id, events, expected_position)`` is checked as ``append``
        checks it; the first one that conflicts raises ConcurrencyError naming its
        stream, and nothing of the call is stored. A write whose event ids already
        sit at its positions returns the stored records (a retried persist).
        """
        if not writes:
            return []
        return self._submit([self._part(stream_id, events_, expected)
                             for stream_id, events_, expected in writes])

    def _part(self, stream_id: str, events_: Sequence[PendingEvent | Event], expected_position: int) -> _Part:
        if self.readonly:
            raise StoreError(f"database {self.where} was opened read-only")
        if not isinstance(stream_id, str) or not stream_id:
            raise StoreError("stream_id must be a non-empty string")
        if not isinstance(expected_position, int) or expected_position < 0:
            raise StoreError(f"expected_position of stream {stream_id!r} must be an integer >= 0, "
                             f"not {expected_position!r}")
        # Encoding happens here, in the caller's thread and outside the commit lock, so
        # an event that cannot be encoded fails only its own append.
        if not isinstance(events_, list | tuple):
            events_ = list(events_)
        ids = os.urandom(16 * len(events_)).hex()  # one syscall for the ids of plain events
        defaults, prefix = self._default_metadata, self._metadata_prefix
        pending: list[_Pending] = []
        add = pending.append
        for index, item in enumerate(events_):
            if _FLAT_EVENTS.get(type(item)) and encode_flat is not None:
                # The common case, inlined: a plain event, no metadata of its own.
                event_id = ids[32 * index:32 * index + 32]
                try:
                    payload = "".join(encode_flat(item.__dict__, 0))
                except (TypeError, ValueError) as error:
                    raise StoreError(f"cannot encode {item.event_type} for stream {stream_id!r}: "
                                     f"{error}") from None
                add((item, payload, {**defaults, "event_id": event_id},
                     prefix + '"event_id":"' + event_id + '"}'))
                continue
            if isinstance(item, Event) and type(item) not in _FLAT_EVENTS:
                _FLAT_EVENTS[type(item)] = is_plain(type(item))
            if isinstance(item, PendingEvent):
                event, extra, event_id = item.event, item.metadata, item.event_id
            else:
                event, extra, event_id = item, None, ids[32 * index:32 * index + 32]
            if not isinstance(event, Event):
                raise StoreError(f"not an event: {event!r}")
            try:
                payload = encode_payload(event)
                if extra is None:
                    # Our own hex id needs no escaping; the defaults were encoded once.
                    meta: dict[str, Any] = {**defaults, "event_id": event_id}
                    meta_text = prefix + '"event_id":"' + event_id + '"}'
                else:
                    meta = {**defaults, **(extra or {}), "event_id": event_id}
                    meta_text = encode_metadata(meta)
            except (TypeError, ValueError) as error:
                raise StoreError(f"cannot encode {event.event_type} for stream {stream_id!r}: "
                                 f"{error}") from None
            add((event, payload, meta, meta_text))
        return _Part(stream_id, pending, expected_position)

    def _submit(self, parts: list[_Part]) -> list[list[RecordedEvent]]:
        request = _Request(parts)
        with self._turn:
            self._queue.append(request)
            leader = not self._leading
            self._leading = True
        if not leader:
            # A follower sleeps on its own event: woken either with its request done, or
            # (not done) as the next leader. Nobody queues for the writer just to learn
            # that its request was committed, so each leader takes everyone who arrived.
            request.wake.wait()
        if not request.done:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.result

    def _lead(self) -> None:
        # Wake the committed followers first, then commit what queued meanwhile ourselves (a
        # few rounds at most, so our own caller is not kept from its result for long): each
        # hand-over to another thread costs a GIL switch, about as much as a WAL commit.
        for _ in range(self.lead_rounds):
            with self._turn:
                batch, self._queue = self._queue, []
                if not batch:
                    self._leading = False
                    return
            try:
                with self._commit_lock:
                    self._commit(batch)
            finally:
                for done in batch:
                    done.wake.set()
        self._hand_over()

    def _hand_over(self) -> None:
        """Wake the first waiting appender as the next leader, or step down."""
        with self._turn:
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._leading = False
        if successor is not None:
            successor.wake.set()

    def _connection(self) -> Any:
        """The writer's DBAPI connection (pooled by SQLAlchemy, pragmas applied on connect)."""
        if self._closed:
            raise StoreError(f"store {self.where} is closed")
        if self._writer is None:
            assert self._writer_engine is not None
            self._writer = self._writer_engine.raw_connection()
        return self._writer

    def _commit(self, batch: list[_Request]) -> None:
        self.batches.append(len(batch))
        if len(self.batches) > 1000:
            del self.batches[:500]
        try:
            with translated(self.where):
                connection = self._connection()
                cursor = connection.cursor()
                try:
                    if self._sql.begin:
                        cursor.execute(self._sql.begin)
                    rows, positions, head = self._stage(cursor, batch)
                    if rows:
                        cursor.executemany(self._sql.insert, rows)
                        cursor.execute(self._sql.set_head, (head,))
                    connection.commit()
                except BaseException as error:
                    self._known_head = None
                    self._rollback(connection, error)
                    raise
                else:
                    self._positions.update(positions)
                    self._known_head = head
                finally:
                    _close_quietly(cursor)
        except BaseException as error:
            for request in batch:
                if request.error is None:
                    request.error = error
                    request.result = []
        finally:
            for request in batch:
                request.done = True

    def _rollback(self, connection: Any, error: BaseException) -> None:
        try:
            connection.rollback()
        except Exception:
            self._drop_writer()
            return
        if self.dialect == "postgresql" and getattr(connection, "closed", False):
            self._drop_writer()

    def _drop_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.invalidate()
            self._writer = None

    def _stage(self, cursor: Any, batch: list[_Request]) -> tuple[list[tuple[Any, ...]], dict[str, int], int]:
        """Check and number every request in memory; returns the rows, stream positions and new head."""
        sql = self._sql
        cursor.execute(sql.head)
        head = cursor.fetchone()[0]
        if self._last_recorded is None:
            cursor.execute(sql.latest)
            latest = cursor.fetchone()[0]
            self._last_recorded = _as_utc(latest) if latest is not None else datetime.min.replace(tzinfo=UTC)
        now = max(self._clock(), self._last_recorded)
        self._last_recorded = now
        stamp = _sqlite_time(now) if self.dialect == "sqlite" else now
        if head != self._known_head or len(self._positions) > 100_000:
            self._positions.clear()
        cached = self._positions
        positions: dict[str, int] = {}
        staged: dict[str, list[RecordedEvent]] = {}
        rows: list[tuple[Any, ...]] = []
        for request in batch:
            # A request's rows, positions and records join the batch only if all its parts fit.
            mine_positions: dict[str, int] = {}
            mine_staged: dict[str, list[RecordedEvent]] = {}
            mine_rows: list[tuple[Any, ...]] = []
            results: list[list[RecordedEvent]] = []
            mine_head = head
            for part in request.parts:
                stream_id = part.stream_id
                current = mine_positions.get(stream_id)
                if current is None:
                    current = positions.get(stream_id)
                if current is None:
                    current = cached.get(stream_id)
                if current is None:
                    cursor.execute(sql.stream_max, (stream_id,))
                    current = cursor.fetchone()[0]
                if part.expected < current and part.pending:
                    earlier = staged.get(stream_id, []) + mine_staged.get(stream_id, [])
                    existing = self._existing(cursor, part, earlier)
                    if existing is not None:
                        results.append(existing)
                        mine_positions[stream_id] = current
                        continue
                if part.expected != current:
                    request.error = ConcurrencyError(stream_id, part.expected, current)
                    break
                recorded: list[RecordedEvent] = []
                add_row, add_record = mine_rows.append, recorded.append
                for event, payload, meta, meta_text in part.pending:
                    mine_head += 1
                    current += 1
                    kind = type(event)
                    add_row((mine_head, stream_id, current, kind.__name__, kind.version, stamp, payload,
                             meta_text))
                    if _FAST_RECORD:
                        record = _new(RecordedEvent)
                        _set(record, "__dict__", {"global_position": mine_head, "stream_id": stream_id,
                                                  "stream_position": current, "recorded_at": now,
                                                  "event": event, "metadata": meta})
                        add_record(record)
                    else:
                        add_record(RecordedEvent(mine_head, stream_id, current, now, event, meta))
                mine_positions[stream_id] = current
                mine_staged.setdefault(stream_id, []).extend(recorded)
                results.append(recorded)
            if request.error is not None:
                continue
            head = mine_head
            rows.extend(mine_rows)
            positions.update(mine_positions)
            for stream_id, records in mine_staged.items():
                staged.setdefault(stream_id, []).extend(records)
            request.result = results
        return rows, positions, head

    def _existing(self, cursor: Any, part: _Part, staged: list[RecordedEvent]) -> list[RecordedEvent] | None:
        """The stored records at the part's positions, if they carry the same event ids."""
        stream_id = part.stream_id
        first = part.expected + 1
        last = part.expected + len(part.pending)
        reader = RowReader("raise")
        found = {r.stream_position: r for r in staged if first <= r.stream_position <= last}
        cursor.execute(self._sql.stream_range, (stream_id, first, last))
        for row in cursor.fetchall():
            position, stream, stream_position, recorded_at, *rest = row
            record = reader.record((position, stream, stream_position, _as_utc(recorded_at), *rest))
            assert record is not None
            found[record.stream_position] = record
        records = [found.get(position) for position in range(first, last + 1)]
        ids = [record.event_id if record else None for record in records]
        if ids == [meta["event_id"] for _, _, meta, _ in part.pending]:
            return [record for record in records if record is not None]
        return None

    # ------------------------------------------------------------------ reading

    def read_stream(self, stream_id: str, from_position: int = 1, *,
                    on_error: OnError = "raise") -> list[RecordedEvent]:
        reader = RowReader(on_error)
        mark = self._sql.mark
        rows = self._fetch(f"{self._sql.columns} WHERE stream_id = {mark} AND stream_position >= {mark}"
                           " ORDER BY stream_position", (stream_id, max(from_position, 1)))
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
            rows = self._fetch(*self._page(after, upto, size, selection))
            for row in rows:
                record = reader.record(row)
                if record is not None:
                    if remaining is not None:
                        remaining -= 1
                    yield record
            if len(rows) < size:
                return
            after = rows[-1][0]

    def _page(self, after: int, upto: int | None, size: int,
              selection: EventFilter) -> tuple[str, tuple[Any, ...]]:
        """SQL and parameters for one page of ``read_all``/``follow`` (raw DBAPI, both dialects)."""
        mark = self._sql.mark
        where = [f"global_position > {mark}"]
        params: list[Any] = [after]
        if upto is not None:
            where.append(f"global_position <= {mark}")
            params.append(upto)
        if selection.stream:
            escaped = selection.stream.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(f"(stream_id = {mark} OR stream_id LIKE {mark} ESCAPE '\\')")
            params += [selection.stream, escaped + "%"]
        if selection.types:
            where.append(f"event_type IN ({', '.join([mark] * len(selection.types))})")
            params += selection.types
        for bound, operator in ((selection.since, ">="), (selection.until, "<=")):
            if bound is not None:
                where.append(f"recorded_at {operator} {mark}")
                params.append(_sqlite_time(utc(bound)) if self.dialect == "sqlite" else utc(bound))
        sql = (f"{self._sql.columns} WHERE {' AND '.join(where)} ORDER BY global_position"
               f" LIMIT {int(size)}")
        return sql, tuple(params)

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows as ``RowReader`` takes them, through the DBAPI cursor (no per-row Core work)."""
        with translated(self.where), self._reader.connect() as connection:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
            finally:
                cursor.close()
        if self.dialect == "sqlite":
            return [(g, s, p, _as_utc(at), t, v, payload, meta) for g, s, p, at, t, v, payload, meta in rows]
        return rows

    def _head(self) -> int:
        with translated(self.where), self._reader.connect() as connection:
            return int(connection.execute(HEAD_QUERY).scalar_one())

    def follow(self, after_global: int = 0, *, poll_interval: float = 0.25,
               stop: threading.Event | None = None, checkpoint: str | None = None,
               stream: str | None = None, types: Sequence[str] = (),
               on_error: OnError = "skip") -> Iterator[RecordedEvent]:
        """Yield every event after ``after_global``, then new ones as they are committed.

        Polls with a checkpoint: each poll reads the log head first and then only
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
            head = self._head()
            rows = self._fetch(*self._page(position, head, self.page_size, selection))
            finished = len(rows) < self.page_size
            for row in rows:
                record = reader.record(row)
                position = row[0]
                if record is not None:
                    yield record
                if stop is not None and stop.is_set():
                    finished = False
                    break
            if finished:
                position = max(position, head)  # the filtered-out rest of the page is seen too
            if checkpoint and position != saved:
                self.save_checkpoint(checkpoint, position)
                saved = position
            if finished:
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

    def streams_since(self, after_global: int) -> list[str]:
        """The streams that have events after global position ``after_global``."""
        mark = self._sql.mark
        rows = self._fetch_plain(f"SELECT DISTINCT stream_id FROM events WHERE global_position > {mark}",
                                 (after_global,))
        return sorted(str(row[0]) for row in rows)

    def _fetch_plain(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with translated(self.where), self._reader.connect() as connection:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
            finally:
                cursor.close()

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
        sql = self._sql

        def save(cursor: Any, stamp: Any) -> None:
            cursor.execute(sql.checkpoint_update, (position, stamp, name))
            if cursor.rowcount == 0:
                cursor.execute(sql.checkpoint_insert, (name, position, stamp))

        self._write_small(save)

    # ------------------------------------------------------------------ snapshots

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's snapshot row, or None (also when it is larger than any state of ours)."""
        with translated(self.where), self._reader.connect() as connection:
            row = connection.execute(
                select(snapshots.c.stream_position, snapshots.c.fold_version, snapshots.c.state)
                .where(snapshots.c.stream_id == stream_id)).first()
        if row is None or not isinstance(row[2], str) or len(row[2]) > MAX_SNAPSHOT_CHARS:
            return None
        return Snapshot(stream_id, int(row[0]), str(row[1]), row[2])

    def list_snapshots(self) -> list[tuple[str, int, str]]:
        """``(stream_id, stream_position, fold_version)`` of every snapshot, by stream."""
        with translated(self.where), self._reader.connect() as connection:
            rows = connection.execute(
                select(snapshots.c.stream_id, snapshots.c.stream_position, snapshots.c.fold_version)
                .order_by(snapshots.c.stream_id)).all()
        return [(str(stream), int(position), str(version)) for stream, position, version in rows]

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._write_small(lambda cursor, stamp: self._upsert(
            cursor, self._sql.snapshot_update, self._sql.snapshot_insert,
            (snapshot.stream_position, snapshot.fold_version, snapshot.state, stamp, snapshot.stream_id)))

    def drop_snapshots(self) -> int:
        dropped: list[int] = []

        def drop(cursor: Any, _stamp: Any) -> None:
            cursor.execute("DELETE FROM snapshots")
            dropped.append(cursor.rowcount)

        self._write_small(drop)
        return max(dropped[0], 0) if dropped else 0

    @staticmethod
    def _upsert(cursor: Any, update: str, insert: str, params: tuple[Any, ...]) -> None:
        cursor.execute(update, params)
        if cursor.rowcount == 0:
            cursor.execute(insert, params)

    def time_param(self, moment: datetime) -> Any:
        """``moment`` as this dialect's DBAPI parameter for ``recorded_at`` (SQLite: UTC text)."""
        return _sqlite_time(utc(moment)) if self.dialect == "sqlite" else utc(moment)

    @property
    def mark(self) -> str:
        """The DBAPI parameter mark of this dialect (``?`` or ``%s``)."""
        return self._sql.mark

    def write_transaction(self, work: Any) -> None:
        """Run ``work(cursor, now)`` in one write transaction on the writer connection.

        For upkeep beside the appends (snapshots, retention): the group commit's cached
        stream positions stay valid as long as ``work`` never removes a stream's newest
        row nor touches the log head.
        """
        self._write_small(work)

    def _write_small(self, work: Any) -> None:
        """One short write transaction on the writer connection (checkpoints, snapshots)."""
        if self.readonly:
            raise StoreError(f"database {self.where} was opened read-only")
        sql = self._sql
        with self._commit_lock, translated(self.where):
            connection = self._connection()
            cursor = connection.cursor()
            try:
                if sql.begin:
                    cursor.execute(sql.begin)
                now = datetime.now(UTC)
                work(cursor, _sqlite_time(now) if self.dialect == "sqlite" else now)
                connection.commit()
            except BaseException as error:
                self._rollback(connection, error)
                raise
            finally:
                _close_quietly(cursor)

    # ------------------------------------------------------------------ lifecycle

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's connections without touching them."""
        self._commit_lock = threading.Lock()
        self._turn = threading.Lock()
        self._leading = False
        self._queue = []
        self._writer = None
        self._known_head = None
        self._positions.clear()
        if self._writer_engine is not None:
            self._writer_engine.dispose(close=False)
        self._reader.dispose(close=False)

    def close(self) -> None:
        with self._commit_lock:
            self._closed = True
            if self._writer is not None:
                _close_quietly(self._writer)
                self._writer = None
            if self._writer_engine is not None:
                self._writer_engine.dispose()
            self._reader.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["EventDecodeError", "EventFilter", "EventStore"]
