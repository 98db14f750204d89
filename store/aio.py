"""The asyncio read path (HTTP API, ``events --follow``): SQLAlchemy asyncio engine.

aiosqlite on SQLite (opened read-only), psycopg's async mode on PostgreSQL. Writes
never go through here: the journal is written by the synchronous ``EventStore``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from sqlalchemy import func, select

from store.base import RecordedEvent
from store.engine import async_engine as make_async_engine
from store.engine import check_sqlite_file, parse_url
from store.errors import translated
from store.queries import HEAD_QUERY, EventFilter, OnError, RowReader, page_query, stream_query
from store.schema import checkpoints, events


class AsyncEventReader:
    """Reads and follows the log without blocking the event loop."""

    def __init__(self, url: str, *, busy_timeout: float = 5.0, page_size: int = 1000) -> None:
        self.target = parse_url(url)
        if self.target.dialect == "sqlite":
            check_sqlite_file(self.target, must_exist=True)
        self.page_size = page_size
        self._engine = make_async_engine(self.target, busy_timeout=busy_timeout, readonly=True)

    @property
    def where(self) -> str:
        return self.target.where

    async def read_all(self, after_global: int = 0, limit: int | None = None, *, stream: str | None = None,
                       types: Sequence[str] = (), since: datetime | None = None,
                       until: datetime | None = None, upto: int | None = None,
                       on_error: OnError = "raise") -> list[RecordedEvent]:
        """Like ``EventStore.read_all``, as a list (use ``limit`` for large logs)."""
        selection = EventFilter(stream, tuple(types), since, until)
        reader = RowReader(on_error)
        records: list[RecordedEvent] = []
        after = after_global
        while limit is None or len(records) < limit:
            size = self.page_size if limit is None else min(self.page_size, limit - len(records))
            with translated(self.where):
                async with self._engine.connect() as connection:
                    rows = (await connection.execute(page_query(after, upto, size, selection))).all()
            records.extend(record for row in rows if (record := reader.record(row)) is not None)
            if len(rows) < size:
                break
            after = rows[-1][0]
        return records

    async def read_stream(self, stream_id: str, from_position: int = 1, *,
                          on_error: OnError = "raise") -> list[RecordedEvent]:
        reader = RowReader(on_error)
        with translated(self.where):
            async with self._engine.connect() as connection:
                rows = (await connection.execute(stream_query(stream_id, max(from_position, 1)))).all()
        return [record for row in rows if (record := reader.record(row)) is not None]

    async def last_global_position(self) -> int:
        with translated(self.where):
            async with self._engine.connect() as connection:
                return int((await connection.execute(HEAD_QUERY)).scalar_one())

    async def load_checkpoint(self, name: str) -> int:
        with translated(self.where):
            async with self._engine.connect() as connection:
                value = (await connection.execute(
                    select(checkpoints.c.global_position).where(checkpoints.c.name == name))).scalar()
        return int(value or 0)

    async def count(self, *, stream: str | None = None, types: Sequence[str] = ()) -> int:
        from store.queries import where_clauses

        query = select(func.count()).select_from(events)
        clauses = where_clauses(EventFilter(stream, tuple(types)))
        if clauses:
            query = query.where(*clauses)
        with translated(self.where):
            async with self._engine.connect() as connection:
                return int((await connection.execute(query)).scalar_one())

    async def follow(self, after_global: int = 0, *, poll_interval: float = 0.25,
                     stream: str | None = None, types: Sequence[str] = (),
                     stop: asyncio.Event | None = None, on_error: OnError = "skip",
                     idle: Callable[[], None] | None = None) -> AsyncIterator[RecordedEvent]:
        """Every event after ``after_global``, then new ones as they commit (polling with a checkpoint).

        ``idle`` is called each time the reader has read the whole log and waits for more.

        As in ``EventStore.follow``, each poll reads the log head first and then
        only rows up to it, so no committed row is skipped and filtered-out rows are
        not scanned twice.
        """
        selection = EventFilter(stream, tuple(types))
        reader = RowReader(on_error)
        position = after_global
        while stop is None or not stop.is_set():
            with translated(self.where):
                async with self._engine.connect() as connection:
                    head = int((await connection.execute(HEAD_QUERY)).scalar_one())
                    rows = (await connection.execute(
                        page_query(position, head, self.page_size, selection))).all()
            for row in rows:
                position = row[0]
                record = reader.record(row)
                if record is not None:
                    yield record
            if len(rows) < self.page_size:
                position = max(position, head)
                if idle is not None:
                    idle()
                if stop is None:
                    await asyncio.sleep(poll_interval)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), poll_interval)

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> AsyncEventReader:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def open_async_reader(url: str, *, busy_timeout: float = 5.0) -> AsyncEventReader:
    return AsyncEventReader(url, busy_timeout=busy_timeout)
