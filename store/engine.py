"""Engines for the store: URL handling, SQLite pragmas, explicit transactions.

SQLite: WAL, a busy timeout, ``synchronous`` NORMAL or FULL. pysqlite's own
transaction handling is switched off (``isolation_level=None``) and the
engine emits ``BEGIN`` itself: ``BEGIN IMMEDIATE`` on the writer, so the
write lock is taken before the positions are read, never upgraded later.
PostgreSQL goes through the same code with ``postgresql+psycopg``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool, QueuePool

from store.base import StoreError
from store.errors import DatabaseUnavailable, on_readonly_filesystem

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

Synchronous = Literal["NORMAL", "FULL"]
SYNCHRONOUS_VALUES: tuple[str, ...] = ("NORMAL", "FULL")
WAL_RETRY_S = 0.02


@dataclass(frozen=True)
class Target:
    """A parsed database URL: which dialect, and what to call it in messages."""

    url: URL
    dialect: str  # "sqlite" or "postgresql"
    path: Path | None  # the SQLite file

    @property
    def where(self) -> str:
        """The file path for SQLite; the URL without its password otherwise."""
        if self.path is not None:
            return str(self.path)
        return self.url.render_as_string(hide_password=True)


def parse_url(url: str | URL) -> Target:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"not a database URL: {url!r} (e.g. sqlite:////path/to/lanrage.db)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise StoreError("the event store needs a SQLite file (sqlite:////path/lanrage.db), "
                             "not an in-memory or URI database")
        return Target(parsed.set(drivername="sqlite"), "sqlite", Path(database).expanduser().absolute())
    if backend == "postgresql":
        return Target(parsed.set(drivername="postgresql+psycopg"), "postgresql", None)
    raise StoreError(f"unsupported database {backend!r}: use sqlite:///FILE or postgresql+psycopg://...")


def _sqlite_connect(path: Path, readonly: bool, busy_timeout: float):  # type: ignore[no-untyped-def]
    def connect() -> sqlite3.Connection:
        if readonly:
            uri = f"file:{quote(str(path))}?mode=ro"
            if on_readonly_filesystem(path) and not Path(f"{path}-shm").exists():
                # Nobody can be writing a file on a read-only mount, and WAL could not
                # create its -shm there: read it as an immutable file.
                uri += "&immutable=1"
            return sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        return sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None,
                               check_same_thread=False)

    return connect


def check_sqlite_file(target: Target, must_exist: bool) -> None:
    """Fail early, naming the file, when it or its directory is missing."""
    assert target.path is not None
    if must_exist and not target.path.exists():
        raise DatabaseUnavailable(f"no database at {target.path} (run `lanrage db upgrade` to create one)")
    if not target.path.parent.is_dir():
        raise DatabaseUnavailable(f"cannot create database {target.path}: directory "
                                  f"{target.path.parent} does not exist")
    if target.path.exists() and target.path.is_dir():
        raise DatabaseUnavailable(f"database path {target.path} is a directory")


def sync_engine(target: Target, *, role: Literal["writer", "reader"], synchronous: Synchronous = "NORMAL",
                busy_timeout: float = 5.0, readonly: bool = False, pool_size: int = 4) -> Engine:
    """One engine per role; the writer's transactions take the write lock up front."""
    if synchronous not in SYNCHRONOUS_VALUES:
        raise StoreError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
    if target.dialect == "sqlite":
        assert target.path is not None
        engine = create_engine(
            "sqlite+pysqlite://", creator=_sqlite_connect(target.path, readonly, busy_timeout),
            poolclass=QueuePool, pool_size=1 if role == "writer" else pool_size, max_overflow=8,
        )
        _sqlite_events(engine, role=role, synchronous=synchronous, busy_timeout=busy_timeout,
                       readonly=readonly)
        return engine
    engine = create_engine(target.url, pool_size=1 if role == "writer" else pool_size,
                           max_overflow=8, pool_pre_ping=True)
    if readonly:
        _pg_readonly(engine)
    return engine


def _sqlite_events(engine: Engine, *, role: str, synchronous: str, busy_timeout: float,
                   readonly: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if readonly:
                cursor.execute("PRAGMA query_only = ON")
            else:
                _enable_wal(cursor, busy_timeout)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    begin = "BEGIN IMMEDIATE" if role == "writer" else "BEGIN"

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)


def _enable_wal(cursor: sqlite3.Cursor, busy_timeout: float) -> None:
    """Switch a database to WAL, waiting out other processes doing the same.

    WAL is a property of the file: once set, this is one read. Switching a fresh file
    needs its exclusive lock, and SQLite answers "database is locked" at once, without
    the busy handler, when another connection holds a lock meanwhile (processes starting
    together on a new database): retry until the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_RETRY_S)


def _pg_readonly(engine: Engine | Any) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET default_transaction_read_only = on")
        finally:
            cursor.close()
        dbapi_connection.commit()


def async_engine(target: Target, *, busy_timeout: float = 5.0, readonly: bool = True) -> AsyncEngine:
    """The asyncio engine for the read path: aiosqlite on SQLite, psycopg async on PostgreSQL."""
    # Loaded here, by the first reader: SQLAlchemy's asyncio package pulls in its ORM.
    from sqlalchemy.ext.asyncio import create_async_engine

    if target.dialect == "sqlite":
        assert target.path is not None
        if readonly:
            url = f"sqlite+aiosqlite:///file:{quote(str(target.path))}?mode=ro&uri=true"
            if on_readonly_filesystem(target.path) and not Path(f"{target.path}-shm").exists():
                url += "&immutable=1"
        else:
            url = f"sqlite+aiosqlite:///{target.path}"
        engine = create_async_engine(url, poolclass=NullPool,
                                     connect_args={"timeout": busy_timeout, "isolation_level": None})

        @event.listens_for(engine.sync_engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                if readonly:
                    cursor.execute("PRAGMA query_only = ON")
            finally:
                cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    engine = create_async_engine(target.url, pool_size=4, max_overflow=4, pool_pre_ping=True)
    if readonly:
        _pg_readonly(engine.sync_engine)
    return engine
