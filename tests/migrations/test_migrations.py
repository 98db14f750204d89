"""Alembic owns the schema: upgrade and downgrade on empty and full databases, and the views."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from events import types as ev
from store import PendingEvent, StoreError, migrate, open_store
from store.migrate import current, downgrade, head_revisions
from tests.store.helpers import left, metrics, state

ROOT = Path(__file__).resolve().parents[2]
HEAD = head_revisions()[0]


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()) | set(inspector.get_view_names())
    finally:
        engine.dispose()


def _fill(url: str) -> None:
    with open_store(url, metadata={"node_id": "n"}) as store:
        store.append("peer:n:p:bob", [state("bob", "connecting"), state("bob", "connected", "connecting"),
                                    metrics("bob", 21.5),
                                    ev.PathSwitched(party_id="p", peer_id="bob", from_path="direct",
                                                    to_path="relay", reason="loss 30%",
                                                    to_relay="203.0.113.5:8668", to_latency_ms=40.0)], 0)
        store.append("party:n:p", [left()], 0)


def _count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM events")).scalar_one())
    finally:
        engine.dispose()


def test_upgrade_and_downgrade_an_empty_database(any_db_url: str) -> None:
    assert migrate(any_db_url) == head_revisions()[0]
    assert {"events", "event_log_head", "event_checkpoints", "connection_history",
            "peer_metrics"} <= _tables(any_db_url)
    assert downgrade(any_db_url, "base") is None
    assert _tables(any_db_url) <= {"alembic_version"}
    assert migrate(any_db_url) == HEAD
    assert migrate(any_db_url) == HEAD  # idempotent


def test_upgrade_and_downgrade_a_full_database_keeps_the_events(any_db_url: str) -> None:
    _fill(any_db_url)
    assert _count(any_db_url) == 5
    assert downgrade(any_db_url, "0001_events") == "0001_events"
    assert "connection_history" not in _tables(any_db_url)
    assert _count(any_db_url) == 5
    assert migrate(any_db_url) == HEAD
    assert current(any_db_url) == HEAD
    with open_store(any_db_url) as store:
        assert store.stream_position("peer:n:p:bob") == 4
        assert store.append("peer:n:p:bob", [state("bob", "closed", "connected")], 4)[0].global_position == 6
    assert downgrade(any_db_url, "base") is None
    assert "events" not in _tables(any_db_url)


def test_views_from_the_stock_sqlite3_shell(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    _fill(url)
    out = subprocess.run(
        ["sqlite3", "-separator", "|", str(tmp_path / "events.db"),
         "SELECT peer_id, from_state, to_state, from_path, path, endpoint, relay, latency_ms, reason"
         " FROM connection_history ORDER BY global_position;"
         "SELECT peer_id, latency_ms, jitter_ms, loss, rx_bytes, tx_bytes, quality FROM peer_metrics;"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [
        "bob||connecting|||192.0.2.1:51820||12.5|test",  # no path until it is up
        "bob|connecting|connected||direct|192.0.2.1:51820||12.5|test",
        "bob|||direct|relay||203.0.113.5:8668|40.0|loss 30%",
        "bob|21.5|1.5|0.0|1000|2000|97.5",
    ]


def test_views_from_psql(pg_url: str) -> None:
    _fill(pg_url)
    url = make_url(pg_url)
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    out = subprocess.run(
        ["psql", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "",
         "-d", url.database or "", "-AtF|", "-c",
         "SELECT peer_id, from_state, to_state, from_path, path, endpoint, relay, latency_ms, reason"
         " FROM connection_history ORDER BY global_position", "-c",
         "SELECT peer_id, latency_ms, jitter_ms, loss, rx_bytes, tx_bytes, quality FROM peer_metrics"],
        capture_output=True, text=True, check=True, env=env).stdout.splitlines()
    assert out == [
        "bob||connecting|||192.0.2.1:51820||12.5|test",  # no path until it is up
        "bob|connecting|connected||direct|192.0.2.1:51820||12.5|test",
        "bob|||direct|relay||203.0.113.5:8668|40|loss 30%",
        "bob|21.5|1.5|0|1000|2000|97.5",
    ]


def test_cli_db_upgrade_and_plain_alembic(tmp_path: Path) -> None:
    import cli

    db = tmp_path / "cli.db"
    assert cli.main(["db", "upgrade", "--db", f"sqlite:///{db}"]) == 0
    assert "connection_history" in _tables(f"sqlite:///{db}")
    other = tmp_path / "alembic.db"
    env = {**os.environ, "LANRAGE_DB": f"sqlite:///{other}"}
    subprocess.run([str(ROOT / ".venv/bin/alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    assert current(f"sqlite:///{other}") == HEAD


def test_old_stream_ids_move_to_node_unique_ones_and_nothing_else_changes(any_db_url: str) -> None:
    migrate(any_db_url, "0002_views")
    node = {"node_id": "n1"}
    with open_store(any_db_url, upgrade=False) as store:
        started = ev.NodeStarted(node_id="n1", public_key="K", listen_port=1)
        store.append("node:n1", [PendingEvent(started, node)], 0)
        store.append("party:p", [PendingEvent(left(1), {**node, "actor": "party/p"})], 0)
        store.append("peer:p:bob", [PendingEvent(state("bob", "connecting"), node),
                                    PendingEvent(metrics("bob"), node)], 0)
        degraded = ev.RelayDegraded(relay="203.0.113.5:8668", reason="r", rtt_ms=None)
        store.append("relay:203.0.113.5:8668", [PendingEvent(degraded, node)], 0)
        store.append("relay:198.51.100.7:8668", [ev.RelayServerStarted(relay="198.51.100.7:8668")], 0)
        store.append("party:q", [left(2)], 0)  # no node id of its own: the database's only node
        store.append("control:lab", [left(3)], 0)
        store.append("party:p", [PendingEvent(left(4), node)], 1)
        before = list(store.read_all())
    assert migrate(any_db_url) == HEAD
    with open_store(any_db_url) as store:
        after = list(store.read_all())
    moved = {"party:p": "party:n1:p", "peer:p:bob": "peer:n1:p:bob",
             "relay:203.0.113.5:8668": "relay:n1:203.0.113.5:8668",
             "relay:198.51.100.7:8668": "relay-server:198.51.100.7:8668", "party:q": "party:n1:q"}
    assert [(r.global_position, moved.get(r.stream_id, r.stream_id), r.stream_position, r.recorded_at,
             r.event, r.metadata) for r in before] == \
        [(r.global_position, r.stream_id, r.stream_position, r.recorded_at, r.event, r.metadata)
         for r in after]
    engine = create_engine(any_db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT node_id, stream_id, peer_id FROM connection_history")
                                      ).all()
            samples = connection.execute(text("SELECT node_id, peer_id FROM peer_metrics")).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [("n1", "peer:n1:p:bob", "bob")]
    assert [tuple(row) for row in samples] == [("n1", "bob")]
    # Back down to the old names (one node), and up again.
    assert downgrade(any_db_url, "0002_views") == "0002_views"
    with open_store(any_db_url, upgrade=False) as store:
        assert [r.stream_id for r in store.read_all()] == [r.stream_id for r in before]
    assert migrate(any_db_url) == HEAD


def test_open_store_upgrades_an_old_schema(sqlite_url: str) -> None:
    migrate(sqlite_url, "0001_events")
    with open_store(sqlite_url) as store:
        store.append("peer:n:p:a", [left()], 0)
    assert current(sqlite_url) == HEAD


def test_processes_starting_together_on_a_fresh_database_all_succeed(any_db_url: str) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        revisions = pool.map(migrate, [any_db_url] * 4)
    assert revisions == [HEAD] * 4
    with open_store(any_db_url) as store:
        assert store.append("node:n", [left()], 0)[0].global_position == 1


def test_a_schema_from_a_newer_lanrage_is_a_clear_error(sqlite_url: str) -> None:
    migrate(sqlite_url)
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"at revision 0099_future\) to head"):
        open_store(sqlite_url)


def test_the_store_schema_and_the_migrations_agree(any_db_url: str) -> None:
    """`alembic check`: autogenerate finds nothing between store/schema.py and the migrated database."""
    from alembic import command

    from store.engine import parse_url, sync_engine
    from store.migrate import alembic_config

    migrate(any_db_url)
    engine = sync_engine(parse_url(any_db_url), role="writer")
    try:
        with engine.connect() as connection:
            command.check(alembic_config(connection))  # raises AutogenerateDiffsDetected otherwise
    finally:
        engine.dispose()


def test_the_heads_read_from_the_files_are_alembics() -> None:
    from alembic.script import ScriptDirectory

    from store.migrate import alembic_config

    assert head_revisions() == tuple(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))
