"""Errors of the SQL event store, each naming the database file (or URL) or the row.

Driver errors are translated here once, so that callers (actors, CLI, API)
see one line that says what happened to which database, never a traceback
from deep inside SQLAlchemy.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import exc as sa_exc

from store.base import StoreError

# Errors from the DBAPI drivers themselves (the writer and replay use their cursors directly).
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (sa_exc.DBAPIError, sqlite3.Error, OSError)


def driver_errors() -> tuple[type[BaseException], ...]:
    """The drivers' own errors; psycopg's only once psycopg is loaded (a PostgreSQL store
    loads it, and only it raises them): a node on SQLite never imports it."""
    psycopg = sys.modules.get("psycopg")
    return _DRIVER_ERRORS if psycopg is None else (*_DRIVER_ERRORS, psycopg.Error)


class DatabaseUnavailable(StoreError):
    """The database cannot be opened: missing file or directory, server down, not a database."""


class DatabaseLocked(StoreError):
    """Another writer held the database longer than the busy timeout."""


class DatabaseReadOnly(StoreError):
    """The database (file, directory or filesystem) does not accept writes."""


class DiskFull(StoreError):
    """The filesystem holding the database has no room left; nothing stored was lost."""


class SchemaMissing(StoreError):
    """The database has no ``events`` table: run ``lanrage db upgrade``."""


class UnknownRelation(StoreError):
    """A query names a table or view the database does not have (a typo, most often)."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class ReadOnlyStatement(StoreError):
    """A statement that would write was refused by a read-only query path."""


class EventDecodeError(StoreError):
    """A stored row could not be turned back into an event."""

    def __init__(self, global_position: int, stream_id: str, stream_position: int,
                 event_type: str, event_version: int, cause: Exception) -> None:
        super().__init__(
            f"cannot decode event at global position {global_position} "
            f"(stream {stream_id!r} position {stream_position}, {event_type} v{event_version}): {cause}"
        )
        self.global_position = global_position
        self.stream_id = stream_id
        self.stream_position = stream_position
        self.event_type = event_type
        self.event_version = event_version
        self.cause = cause


def classify(error: BaseException, where: str) -> StoreError | None:
    """Turn a driver error into a clear StoreError naming ``where``; None if not ours to explain."""
    text = str(getattr(error, "orig", None) or error).lower()
    if "database is locked" in text or "database table is locked" in text:
        return DatabaseLocked(f"database {where} is locked by another writer; try again later")
    if "readonly" in text or "read-only" in text or "read only" in text:
        return DatabaseReadOnly(f"database {where} is read-only: {_first_line(error)}")
    if "disk is full" in text or "no space left" in text or "disk full" in text:
        return DiskFull(f"disk full while writing database {where}; nothing already stored was lost")
    if "unable to open database file" in text:
        return _cannot_open(where)
    if "file is not a database" in text or "malformed" in text:
        return DatabaseUnavailable(f"database {where} is not a valid SQLite database or is corrupt")
    missing = _missing_relation(str(getattr(error, "orig", None) or error))
    if missing is not None and missing.lower() not in STORE_TABLES:
        return UnknownRelation(f"database {where} has no table or view {missing!r}", missing)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return SchemaMissing(f"database {where} has no event store schema; run `lanrage db upgrade`")
    if "connection refused" in text or "could not connect" in text or "connection failed" in text:
        return DatabaseUnavailable(f"cannot connect to database {where}: {_first_line(error)}")
    if "database" in text and "does not exist" in text:
        return DatabaseUnavailable(f"database {where} does not exist")
    return None


# The tables the migrations create: without them the schema is missing, not the user's spelling.
STORE_TABLES = ("events", "event_log_head", "event_checkpoints", "alembic_version")
_MISSING = (re.compile(r"no such table: (?:\w+\.)?([\w.]+)"),
            re.compile(r'relation "([^"]+)" does not exist'))


def _missing_relation(text: str) -> str | None:
    for pattern in _MISSING:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def on_readonly_filesystem(path: Path) -> bool:
    try:
        return bool(os.statvfs(path if path.is_dir() else path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _cannot_open(where: str) -> StoreError:
    path = Path(where)
    if not path.is_absolute():
        return DatabaseUnavailable(f"cannot open database {where}")
    if not path.parent.is_dir():
        return DatabaseUnavailable(f"cannot open database {where}: directory {path.parent} does not exist")
    if path.exists() and on_readonly_filesystem(path):
        return DatabaseReadOnly(f"database {where} is on a read-only filesystem; SQLite's WAL mode must "
                                "create its -wal/-shm files beside it to write")
    if not path.exists():
        return DatabaseUnavailable(f"cannot open database {where}: the file does not exist")
    return DatabaseUnavailable(f"cannot open database {where}: permission denied or not a regular file")


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


@contextmanager
def translated(where: str) -> Iterator[None]:
    """Re-raise driver and OS errors as StoreErrors naming ``where``."""
    try:
        yield
    except StoreError:
        raise
    except driver_errors() as error:
        clear = classify(error, where)
        if clear is None:
            if isinstance(error, OSError):
                raise
            raise StoreError(f"database {where}: {_first_line(error)}") from error
        raise clear from error
