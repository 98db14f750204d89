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
        store.append("party:p", [
            ev.PartyCreated(party_id="p", name="lan night", host_peer_id="alice"),
            ev.PeerJoined(party_id="p", peer_id="bob42", name="Bob", public_key="K"),
            ev.VirtualIpAllocated(party_id="p", peer_id="bob42", virtual_ip="10.66.0.2")], 0)
        store.append("peer:p:bob42", [
            state("bob42", "connecting"), state("bob42", "connected", "connecting"), metrics("bob42")], 0)
        store.append("peer:p:carol", [state("carol", "connecting")], 0)
    return any_db_url


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_events_table_and_filters(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["events", "--db", db], capsys)
    assert code == 0
    assert "PartyCreated" in out and "peer:p:carol" in out and "MetricsSampled" in out
    local_now = datetime.now().astimezone().strftime("%Y-%m-%d")
    assert local_now in out
    code, out, _ = run(["events", "--db", db, "--stream", "peer:p:bob", "--type", "ConnectionStateChanged",
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
        store.append("peer:p:bob1", [state("bob1", "connecting")], 0)
        store.append("peer:p:bob2", [state("bob2", "connecting")], 0)
    code, _, err = run(["history", "bob", "--db", sqlite_url], capsys)
    assert code != 0 and "'bob' matches several peers: bob1 in party p; bob2 in party p" in err
    code, out, _ = run(["history", "bob2", "--db", sqlite_url], capsys)
    assert code == 0 and "∅ → connecting" in out
    with open_store(sqlite_url) as store:
        store.append("peer:p:bob", [state("bob", "connecting"), state("bob", "failed", "connecting")], 0)
    code, out, _ = run(["history", "bob", "--db", sqlite_url, "--json"], capsys)
    assert code == 0 and {json.loads(line)["stream_id"] for line in out.splitlines()} == {"peer:p:bob"}


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
    assert world["connections"]["peer:p:bob42"]["state"] == "connecting"
    assert "peer:p:carol" not in world["connections"]
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
        store.append("peer:p:a", [left(0)], 0)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "events", "--follow", "--json", "--type", "PeerLeft",
             "--db", sqlite_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert process.stdout is not None
            first = json.loads(process.stdout.readline())
            assert first["payload"]["reason"] == "r0"
            store.append("peer:p:a", [metrics("a"), left(1)], 1)
            store.append("peer:p:b", [left(2)], 0)
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
        (record,) = store.append("peer:p:a", [state("a", "connecting")], 0)
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
        store.append("peer:p:a", [state("a", "connecting"), state("a", "connected", "connecting")], 0)
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE events SET event_version = 9 WHERE global_position = 2")
    code, _, err = run(["replay", "--db", sqlite_url], capsys)
    assert code != 0 and "global position 2 (stream 'peer:p:a' position 2" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run(["replay", "--db", sqlite_url, "--skip-bad", "--json"], capsys)
    assert code == 0 and "warning: cannot decode event at global position 2" in err
    assert json.loads(out)["connections"]["peer:p:a"]["state"] == "connecting"
    code, out, err = run(["events", "--db", sqlite_url, "--json"], capsys)
    assert code == 0 and len(out.splitlines()) == 1 and "global position 2" in err


def test_sql_shows_json_columns_as_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["sql", "SELECT payload FROM events WHERE global_position = 1", "--db", db], capsys)
    assert code == 0 and '"name": "lan night"' in out.replace('":"', '": "')
