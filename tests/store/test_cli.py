"""The history commands, through ``cli.main`` (and one real subprocess for --follow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import cli
from events import types as ev
from store import open_store
from tests.store.helpers import left, metrics, state

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(any_db_url: str) -> str:
    with open_store(any_db_url) as store:
        store.append("party:n:p", [
            ev.PartyCreated(party_id="p", name="lan night", host_peer_id="alice"),
            ev.PeerJoined(party_id="p", peer_id="bob42", name="Bob", public_key="K"),
            ev.VirtualIpAllocated(party_id="p", peer_id="bob42", virtual_ip="10.66.0.2")], 0)
        store.append("peer:n:p:bob42", [
            state("bob42", "connecting"), state("bob42", "connected", "connecting"), metrics("bob42")], 0)
        store.append("peer:n:p:carol", [state("carol", "connecting")], 0)
    return any_db_url


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_events_table_and_filters(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["events", "--db", db], capsys)
    assert code == 0
    assert "PartyCreated" in out and "peer:n:p:carol" in out and "MetricsSampled" in out
    local_now = datetime.now().astimezone().strftime("%Y-%m-%d")
    assert local_now in out
    code, out, _ = run(["events", "--db", db, "--stream", "peer:n:p:bob", "--type", "ConnectionStateChanged",
                        "--json"], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["stream_position"] for r in records] == [1, 2]
    assert records[1]["payload"]["to_state"] == "connected"
    assert set(records[0]) == {"global_position", "stream_id", "stream_position", "event_type",
                               "event_version", "recorded_at", "payload", "metadata"}
    code, out, _ = run(["events", "--db", db, "--json", "--limit", "2", "--after", "1"], capsys)
    assert [json.loads(line)["global_position"] for line in out.splitlines()] == [2, 3]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    code, out, _ = run(["events", "--db", db, "--since", future], capsys)
    assert code == 0 and "no events match" in out
    code, out, _ = run(["events", "--db", db, "--json", "--since", "-10m", "--until", "now"], capsys)
    assert len(out.splitlines()) == 7


@pytest.mark.parametrize("args, message", [
    (["events", "--since", "yesterday-ish"], "--since: cannot read 'yesterday-ish' as a time"),
    (["events", "--type", "NoSuchEvent"], "--type: unknown event type 'NoSuchEvent'"),
    (["replay", "--at", "25:99"], "--at: cannot read '25:99'"),
    (["history", "zed"], "no peer matches 'zed'; known peers: Bob (bob42) in party lan night (p); carol"),
    (["history", "nowhere:bob"], "no party matches 'nowhere' in 'nowhere:bob'; parties: lan night (p)"),
    (["history", " "], "PEER must not be empty"),
    (["replay", "--at", "yesterday at noon"], "--at: cannot read 'yesterday at noon' as a time; use 21:03,"),
    (["events", "--until", "-5 fortnights"], "--until: cannot read '-5 fortnights'"),
    (["sql", "SELECT * FROM conection_history"], "has no table or view 'conection_history'"),
    (["sql", "DELETE FROM events"], "refusing DELETE statement: `sql` is read-only"),
    (["sql", "  -- sneaky\n DROP TABLE events"], "refusing DROP statement"),
    (["sql", "SELEC 1"], "refusing SELEC statement"),
])
def test_bad_input_is_one_clear_line(db: str, capsys: pytest.CaptureFixture[str], args: list[str],
                                     message: str) -> None:
    code, _, err = run([*args, "--db", db], capsys)
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_history_is_ambiguous_or_resolved(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        store.append("peer:n:p:bob1", [state("bob1", "connecting")], 0)
        store.append("peer:n:p:bob2", [state("bob2", "connecting")], 0)
    code, _, err = run(["history", "bob", "--db", sqlite_url], capsys)
    assert code != 0 and "'bob' matches several peers: bob1 in party p; bob2 in party p" in err
    code, out, _ = run(["history", "bob2", "--db", sqlite_url], capsys)
    assert code == 0 and "∅ → connecting" in out
    with open_store(sqlite_url) as store:
        store.append("peer:n:p:bob", [state("bob", "connecting"), state("bob", "failed", "connecting")], 0)
    code, out, _ = run(["history", "bob", "--db", sqlite_url, "--json"], capsys)
    assert code == 0 and {json.loads(line)["stream_id"] for line in out.splitlines()} == {"peer:n:p:bob"}


def test_write_hidden_in_a_cte_is_refused_by_the_database(db: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["sql", "WITH doomed AS (SELECT 1) DELETE FROM events", "--db", db], capsys)
    assert code != 0 and "read-only" in err.lower()
    code, out, _ = run(["sql", "SELECT count(*) AS n FROM events", "--db", db, "--json"], capsys)
    assert json.loads(out) == {"n": 7}


def test_history_replay_and_sql(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["history", "bob", "--db", db], capsys)
    assert code == 0
    assert "connecting → connected" in out and "MetricsSampled" not in out
    code, out, _ = run(["history", "bob", "--db", db, "--metrics", "--json"], capsys)
    assert [json.loads(line)["event_type"] for line in out.splitlines()][-1] == "MetricsSampled"

    code, out, _ = run(["replay", "--at", "now", "--db", db], capsys)
    assert code == 0 and "lan night" in out and "10.66.0.2" in out and "connected" in out
    code, out, _ = run(["replay", "--position", "4", "--db", db, "--json"], capsys)
    world = json.loads(out)
    assert world["position"] == 4
    assert world["connections"]["peer:n:p:bob42"]["state"] == "connecting"
    assert "peer:n:p:carol" not in world["connections"]
    before = (datetime.now() - timedelta(days=1)).replace(microsecond=0).isoformat()
    code, out, _ = run(["replay", "--at", before, "--db", db, "--json"], capsys)
    assert json.loads(out)["position"] == 0

    code, out, _ = run(["sql", "SELECT peer_id, to_state FROM connection_history ORDER BY global_position",
                        "--db", db], capsys)
    assert code == 0 and "bob42" in out and "connected" in out and "3 rows" in out
    code, out, _ = run(["sql", "SELECT peer_id, quality FROM peer_metrics", "--db", db, "--json"], capsys)
    assert json.loads(out) == {"peer_id": "bob42", "quality": 97.5}


def test_missing_database_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = (["events"], ["replay"], ["history", "x"], ["diagnose", "x"], ["sql", "SELECT 1"],
                ["db", "current"], ["events", "--follow", "--count", "1"])
    for command in commands:
        code, _, err = run([*command, "--state-dir", str(tmp_path / "state")], capsys)
        assert code != 0 and f"no database at {tmp_path / 'state' / 'lanrage.db'}" in err, command
    assert not (tmp_path / "state").exists()  # not even the state directory
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    for command in commands:
        code, _, err = run([*command, "--state-dir", str(existing)], capsys)
        assert code != 0 and "no database at" in err, command
    assert existing.stat().st_mode & 0o777 == 0o755 and list(existing.iterdir()) == []


def test_events_follow_prints_new_events_as_they_commit(sqlite_url: str) -> None:
    with open_store(sqlite_url) as store:
        store.append("peer:n:p:a", [left(0)], 0)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "events", "--follow", "--json", "--type", "PeerLeft",
             "--db", sqlite_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert process.stdout is not None
            first = json.loads(process.stdout.readline())
            assert first["payload"]["reason"] == "r0"
            store.append("peer:n:p:a", [metrics("a"), left(1)], 1)
            store.append("peer:n:p:b", [left(2)], 0)
            reasons = [json.loads(process.stdout.readline())["payload"]["reason"] for _ in range(2)]
            assert reasons == ["r1", "r2"]
            process.send_signal(signal.SIGINT)
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert "Traceback" not in (process.stderr.read() if process.stderr else "")


def test_events_follow_count_exits(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out, _ = run(["events", "--follow", "--count", "3", "--json", "--db", db], capsys)
    assert code == 0 and len(out.splitlines()) == 3 and time.monotonic() - started < 10


def test_tables_show_local_times(sqlite_url: str, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(sqlite_url) as store:
        (record,) = store.append("peer:n:p:a", [state("a", "connecting")], 0)
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time.tzset()
    try:
        expected = (record.recorded_at + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%d %H:%M:%S")
        for command in (["events"], ["sql", "SELECT recorded_at FROM events"], ["history", "a"]):
            code, out, _ = run([*command, "--db", sqlite_url], capsys)
            assert code == 0 and expected in out and "IST" in out, command
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_second_statement_cannot_sneak_a_write_in(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["sql", "SELECT 1; DROP TABLE events", "--db", db], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1
    code, out, _ = run(["sql", "SELECT count(*) AS n FROM events", "--db", db, "--json"], capsys)
    assert code == 0 and json.loads(out) == {"n": 7}


def test_replay_names_a_bad_row_or_skips_it(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    with open_store(sqlite_url) as store:
        store.append("peer:n:p:a", [state("a", "connecting"), state("a", "connected", "connecting")], 0)
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE events SET event_version = 9 WHERE global_position = 2")
    code, _, err = run(["replay", "--db", sqlite_url], capsys)
    assert code != 0 and "global position 2 (stream 'peer:n:p:a' position 2" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run(["replay", "--db", sqlite_url, "--skip-bad", "--json"], capsys)
    assert code == 0 and "warning: cannot decode event at global position 2" in err
    assert json.loads(out)["connections"]["peer:n:p:a"]["state"] == "connecting"
    code, out, err = run(["events", "--db", sqlite_url, "--json"], capsys)
    assert code == 0 and len(out.splitlines()) == 1 and "global position 2" in err


def test_sql_shows_json_columns_as_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["sql", "SELECT payload FROM events WHERE global_position = 1", "--db", db], capsys)
    assert code == 0 and '"name": "lan night"' in out.replace('":"', '": "')


def _two_nodes(url: str) -> None:
    """Two nodes in one database, both in party p and both connected to bob."""
    for node in ("n1", "n2"):
        with open_store(url, metadata={"node_id": node}) as store:
            store.append(f"node:{node}", [ev.NodeStarted(node_id=node, public_key="K", listen_port=51820)], 0)
            store.append(f"party:{node}:p", [ev.PartyJoined(party_id="p", name=f"party of {node}",
                                                             local_peer_id=node)], 0)
            store.append(f"peer:{node}:p:bob", [state("bob", "connecting"),
                                                 state("bob", "connected" if node == "n1" else "failed",
                                                       "connecting")], 0)


def test_a_shared_database_is_read_per_node(any_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _two_nodes(any_db_url)
    code, _, err = run(["history", "bob", "--db", any_db_url], capsys)
    assert code != 0 and "known to several nodes (n1, n2); choose one with --node" in err
    code, out, _ = run(["history", "bob", "--node", "n2", "--db", any_db_url, "--json"], capsys)
    assert code == 0
    timeline = [json.loads(line) for line in out.splitlines()]
    assert {r["stream_id"] for r in timeline} == {"peer:n2:p:bob"}
    assert timeline[-1]["payload"]["to_state"] == "failed"
    code, out, _ = run(["replay", "--node", "n1", "--db", any_db_url, "--json"], capsys)
    world = json.loads(out)
    assert list(world["connections"]) == ["peer:n1:p:bob"] and list(world["nodes"]) == ["node:n1"]
    assert world["connections"]["peer:n1:p:bob"]["state"] == "connected"
    assert world["position"] == 8  # the whole log was read, only n1's streams folded
    code, out, _ = run(["replay", "--db", any_db_url, "--json"], capsys)
    assert set(json.loads(out)["parties"]) == {"party:n1:p", "party:n2:p"}
    code, out, _ = run(["events", "--node", "n2", "--db", any_db_url, "--json", "--limit", "2"], capsys)
    assert [json.loads(line)["stream_id"] for line in out.splitlines()] == ["node:n2", "party:n2:p"]
    code, out, _ = run(["sql", "SELECT node_id, to_state FROM connection_history WHERE to_state IN "
                        "('connected', 'failed') ORDER BY node_id", "--db", any_db_url, "--json"], capsys)
    assert [json.loads(line) for line in out.splitlines()] == [{"node_id": "n1", "to_state": "connected"},
                                                                {"node_id": "n2", "to_state": "failed"}]


def test_replay_inside_a_downtime_shows_the_node_down_and_its_connections_interrupted(
        any_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _two_nodes(any_db_url)
    with open_store(any_db_url, metadata={"node_id": "n1"}) as store:
        last = store.read_stream("peer:n1:p:bob")[-1]
        time.sleep(0.05)
        during = datetime.now(UTC)
        time.sleep(0.05)
        # n1 starts again: it records that its previous run ended abruptly, after the downtime.
        store.append("node:n1", [ev.NodeRunEndedAbruptly(
            node_id="n1", last_global_position=last.global_position,
            last_recorded_at=last.recorded_at.isoformat()),
            ev.NodeStarted(node_id="n1", public_key="K", listen_port=51820)], 1)
    code, out, _ = run(["replay", "--at", during.isoformat(), "--db", any_db_url, "--json"], capsys)
    world = json.loads(out)
    assert world["nodes"]["node:n1"]["running"] is False
    assert world["connections"]["peer:n1:p:bob"]["state"] == "interrupted"
    assert "ended abruptly" in world["connections"]["peer:n1:p:bob"]["reason"]
    assert world["nodes"]["node:n2"]["running"] is True  # another node's crash is not n2's
    assert world["connections"]["peer:n2:p:bob"]["state"] == "failed"
    before_the_end = last.recorded_at - timedelta(microseconds=1)
    code, out, _ = run(["replay", "--at", before_the_end.isoformat(), "--db", any_db_url, "--json"], capsys)
    assert json.loads(out)["nodes"]["node:n1"]["running"] is True  # still up then
    code, out, _ = run(["replay", "--db", any_db_url, "--json"], capsys)
    world = json.loads(out)
    assert world["nodes"]["node:n1"]["running"] is True and world["nodes"]["node:n1"]["abrupt_ends"] == 1
    assert world["connections"]["peer:n1:p:bob"]["state"] == "connected"
    from store.replay import replay

    with open_store(any_db_url, readonly=True) as store:
        assert replay(store, at=during).nodes["node:n1"].running is False
        assert replay(store, at=during, show_downtime=False).nodes["node:n1"].running is True
    code, out, _ = run(["replay", "--at", during.isoformat(), "--node", "n2", "--db", any_db_url], capsys)
    assert code == 0 and "interrupted" not in out
    code, out, _ = run(["replay", "--at", during.isoformat(), "--db", any_db_url], capsys)
    assert code == 0 and "interrupted" in out
