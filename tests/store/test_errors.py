"""Bad rows and bad databases: every error is clear, names the row or file, and loses nothing."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from store import (
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseUnavailable,
    DiskFull,
    EventDecodeError,
    EventStore,
    StoreError,
    open_store,
)
from store.replay import replay
from tests.store.helpers import left, metrics


def _corrupt(url: str, sql: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(sql))
    engine.dispose()


@pytest.fixture
def three(any_db_url: str) -> Iterator[tuple[str, EventStore]]:
    store = open_store(any_db_url)
    store.append("peer:p:a", [left(1)], 0)
    store.append("peer:p:b", [left(2)], 0)
    store.append("peer:p:a", [left(3)], 1)
    try:
        yield any_db_url, store
    finally:
        store.close()


@pytest.mark.parametrize("change, message", [
    ("event_type = 'NoSuchEvent'", "unknown event type 'NoSuchEvent'"),
    ("event_version = 7", "PeerLeft version 7 is newer than this program knows"),
    ("payload = '[1, 2]'", "payload is not a JSON object"),
    ("payload = '{\"party_id\": \"p\"}'", "payload does not fit"),
])
def test_a_bad_row_is_named_and_reading_can_go_on_past_it(three: tuple[str, EventStore], change: str,
                                                          message: str) -> None:
    url, store = three
    _corrupt(url, f"UPDATE events SET {change} WHERE global_position = 2")
    with pytest.raises(EventDecodeError, match=r"global position 2 \(stream 'peer:p:b' position 1") as error:
        list(store.read_all())
    assert message in str(error.value)
    reported: list[EventDecodeError] = []
    assert [r.global_position for r in store.read_all(on_error=reported.append)] == [1, 3]
    assert [e.global_position for e in reported] == [2]
    assert [r.global_position for r in store.read_all(on_error="skip")] == [1, 3]
    with pytest.raises(EventDecodeError, match="global position 2"):
        replay(store)
    assert set(replay(store, on_error="skip").connections) == {"peer:p:a"}  # b's only event was bad
    assert [r.stream_position for r in store.read_stream("peer:p:a")] == [1, 2]
    # The store keeps working: the good stream still appends.
    assert store.append("peer:p:a", [left(4)], 2)[0].global_position == 4


def test_payload_that_is_not_json_on_sqlite(sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        store.append("peer:p:a", [left(1), left(2)], 0)
        _corrupt(sqlite_url, "UPDATE events SET payload = '{not json' WHERE global_position = 1")
        with pytest.raises(EventDecodeError, match=r"global position 1 .*not JSON"):
            list(store.read_all())
        assert [r.global_position for r in store.read_all(on_error="skip")] == [2]


def test_missing_file_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(DatabaseUnavailable, match=f"no database at {path}"):
        open_store(f"sqlite:///{path}", readonly=True)
    assert not path.exists()
    missing_dir = tmp_path / "no" / "such" / "dir.db"
    with pytest.raises(DatabaseUnavailable, match=r"directory .* does not exist"):
        open_store(f"sqlite:///{missing_dir}")


def test_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseUnavailable, match=f"database {path} is not a valid SQLite database"):
        open_store(f"sqlite:///{path}")


def test_unsupported_urls_are_clear() -> None:
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        open_store("mysql://x@y/z")
    with pytest.raises(StoreError, match="not a database URL"):
        open_store("::::")
    with pytest.raises(StoreError, match="needs a SQLite file"):
        open_store("sqlite://")


def test_locked_database_names_the_file_and_recovers(sqlite_url: str, tmp_path: Path) -> None:
    with open_store(sqlite_url, busy_timeout=0.2) as store:
        store.append("peer:p:a", [left(1)], 0)
        blocker = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(DatabaseLocked, match=f"database {tmp_path / 'events.db'} is locked"):
                store.append("peer:p:a", [left(2)], 1)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert store.append("peer:p:a", [left(2)], 1)[0].stream_position == 2


def test_a_fresh_file_another_process_is_writing_is_waited_for_not_locked(tmp_path: Path) -> None:
    """Switching a new file to WAL while another connection writes it fails at once in
    SQLite, without its busy handler (processes starting together on a new database)."""
    import threading

    path = tmp_path / "fresh.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE first_writer (x)")
    writer.execute("BEGIN IMMEDIATE")
    finished = threading.Timer(0.3, writer.execute, ("COMMIT",))
    finished.start()
    try:
        with open_store(f"sqlite:///{path}", busy_timeout=5.0) as store:
            assert store.append("peer:p:a", [left(1)], 0)[0].stream_position == 1
    finally:
        finished.join()
        writer.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_postgres_server_down_is_clear() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot connect to database postgresql"):
        open_store("postgresql+psycopg://lanrage:lanrage@127.0.0.1:1/lanrage")


@contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def test_read_only_filesystem_names_the_file(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "4m") as mount:
        url = f"sqlite:///{mount / 'events.db'}"
        with open_store(url) as store:
            store.append("peer:p:a", [left(1)], 0)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(DatabaseReadOnly, match=f"database {mount / 'events.db'} is on a read-only"):
            open_store(url).append("peer:p:a", [left(2)], 1)
        with open_store(url, readonly=True) as reader:  # reading still works
            assert [r.event for r in reader.read_all()] == [left(1)]


def test_read_only_store_refuses_appends(sqlite_url: str) -> None:
    open_store(sqlite_url).close()
    with open_store(sqlite_url, readonly=True) as store, pytest.raises(StoreError, match="read-only"):
        store.append("peer:p:a", [left(1)], 0)


def test_full_disk_is_named_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "1m") as mount:
        path = mount / "events.db"
        acked = 0
        with open_store(f"sqlite:///{path}") as store:
            with pytest.raises(DiskFull, match=f"disk full while writing database {path}"):
                for i in range(10_000):
                    store.append("peer:p:a", [metrics("a", float(n)) for n in range(20)], acked)
                    acked += 20
                    assert i < 9_999, "the 1 MB filesystem never filled up"
            assert acked > 0
            assert store.stream_position("peer:p:a") == acked
            assert sum(1 for _ in store.read_all()) == acked
        connection = sqlite3.connect(path)
        try:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert connection.execute("SELECT count(*) FROM events").fetchone() == (acked,)
        finally:
            connection.close()
