"""The example queries of docs/store.md, run as documented, against a log with known times.

Each runs through SQLAlchemy on SQLite and PostgreSQL, in the stock ``sqlite3`` shell
and in ``psql``, and must give the answer worked out by hand below. Local time is
Europe/Berlin (CET, UTC+1 in November) in every one of them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

import store.sql
from events import types as ev
from events.streams import metrics_stream, node_stream, party_stream, peer_stream
from store import open_store

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # 11:00 CET
RELAY = "203.0.113.20:3478"
ZONE = "Europe/Berlin"
NODE, PARTY = "n1", "p"
# The node stops cleanly at 2000 s, starts again the next morning at 74000 s and crashes:
# the last event its second run wrote is the sample at 74610 s.
STOP, RESTART, CRASH, SECOND_RESTART = 2000, 74000, 74610, 80000


class _Clock(datetime):
    moment = START

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
        return cls.moment


def examples() -> dict[str, str]:
    document = (ROOT / "docs" / "store.md").read_text()
    found = re.findall(r"<!-- example: ([\w-]+) -->\s*```sql\n(.*?)```", document, re.DOTALL)
    return {name: sql.strip() for name, sql in found}


# name -> rows as "|"-joined text; numbers as both shells print them.
EXPECTED = {
    # Bob dropped at 970 s and 1000 s (10:16 and 10:16:40 UTC) and at 74300 s (06:38 UTC the next
    # day); Carol at 1800 s. By UTC hour the first three would be "10:00" and "06:00".
    "drops-per-hour": ["Bob|2026-11-25 11:00|2", "Bob|2026-11-26 07:00|1", "Carol|2026-11-25 11:00|1"],
    # Bob up on the relay 4-64 (60 s), 975-1000 (25 s) and 1200 until the stop at 2000 (800 s, not
    # until 74005 the next morning); direct 64-970 (906 s), 74010-74300 (290 s) and 74305 until the
    # crash's last event at 74610 (305 s). Connecting and failed rows (17 min of them) are on no path.
    # Carol: direct 5-1800.
    "time-per-path": ["Bob|direct|1501", "Bob|relay|885", "Carol|direct|1795"],
    "relay-time": ["885"],
    # Bob direct: 10 ms for 14 min, 100 ms for 1 min, and 5 min with no answer (no latency, loss 1):
    # latency (10 * 840 + 100 * 60) / 900 = 16 ms (the average of rows says 55), loss
    # (0.5 * 60 + 1 * 300) / 1200 = 0.275 (the average of rows says 0.5).
    "latency-by-path": ["Bob|direct|3|20|16|0.275", "Bob|relay|1|0.5|40|0", "Carol|direct|1|0.5|12|0"],
    "why-relayed": ["Bob|HolePunchAttempted|attempted||", "Bob|HolePunchFailed|failed||punch timed out",
                    "Bob|PathChosen|chosen|relay|hole punch failed: punch timed out",
                    "Bob|DirectPathRetried|succeeded||direct path answered",
                    "Bob|PathSwitched|switched|direct|direct path answered",
                    "Bob|PathChosen|chosen|relay|no direct candidates",
                    "Bob|PathChosen|chosen|direct|punched"],
    # At 500 s and 1500 s: 10:08 and 10:25 UTC.
    "endpoint-changes": ["2026-11-25 11:00|peer|Bob|203.0.113.7:40000|203.0.113.7:40007|wireguard",
                         "2026-11-25 11:00|this node||198.51.100.2:51820|198.51.100.2:61000|stun"],
    "node-stops": ["crashed|1", "stopped|1"],
}


def _state(peer: str, frm: str | None, to: str, reason: str, path: str | None = None,
            relay: str | None = None) -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id=PARTY, peer_id=peer, from_state=frm, to_state=to, reason=reason,
                                     path=path, relay=relay)


def _sample(peer: str, latency: float | None, window_s: float = 30.0, loss: float = 0.0,
            windows: int = 1, first: float | None = None) -> ev.MetricsSampled:
    return ev.MetricsSampled(party_id=PARTY, peer_id=peer, window_s=window_s, probes=int(window_s),
                             latency_ms=latency, jitter_ms=1.0, loss=loss, rx_bytes=0, tx_bytes=0,
                             quality=90.0, windows=windows,
                             first_at="" if first is None else (START + timedelta(seconds=first)).isoformat())


def fill(url: str) -> None:
    """Bob is relayed after a failed punch, goes direct, drops twice, waits on the relay until
    the node stops for the night; the next morning he is direct, drops once, and the node crashes."""
    bob, carol = peer_stream(NODE, PARTY, "bob"), peer_stream(NODE, PARTY, "carol")
    bob_samples, carol_samples = metrics_stream(NODE, PARTY, "bob"), metrics_stream(NODE, PARTY, "carol")
    node, party = node_stream(NODE), party_stream(NODE, PARTY)
    base = {"party_id": PARTY, "peer_id": "bob"}
    story: list[tuple[float, str, object]] = [
        (0, node, ev.NodeStarted(node_id=NODE, public_key="K0", listen_port=51820)),
        (0, party, ev.PartyCreated(party_id=PARTY, name="LAN", host_peer_id="me")),
        (0, party, ev.PeerJoined(party_id=PARTY, peer_id="bob", name="Bob", public_key="K1")),
        (0, party, ev.PeerJoined(party_id=PARTY, peer_id="carol", name="Carol", public_key="K2")),
        (0, bob, _state("bob", None, "connecting", "peer joined the party")),
        (1, bob, ev.ConnectionAttemptStarted(**base, attempt=1, path="direct")),
        (1, bob, ev.HolePunchAttempted(**base, local_candidates=("198.51.100.2:51820",),
                                       remote_candidates=("203.0.113.7:40000",))),
        (3, bob, ev.HolePunchFailed(**base, reason="punch timed out", elapsed_ms=2000.0)),
        (3, bob, ev.PathChosen(**base, path="relay", reason="hole punch failed: punch timed out",
                               relay=RELAY, endpoint="127.0.0.1:40001")),
        (4, bob, _state("bob", "connecting", "connected", "first probe answered", "relay", RELAY)),
        (5, carol, _state("carol", None, "connecting", "peer joined the party")),
        (5, carol, ev.PathChosen(party_id=PARTY, peer_id="carol", path="direct", reason="punched",
                                 endpoint="203.0.113.9:51820")),
        (5, carol, _state("carol", "connecting", "connected", "first probe", "direct")),
        (34, bob_samples, _sample("bob", 40.0)),
        (35, carol_samples, _sample("carol", 12.0)),
        (64, bob, ev.DirectPathRetried(**base, succeeded=True, reason="direct path answered")),
        (64, bob, ev.PathSwitched(**base, from_path="relay", to_path="direct", reason="direct path answered",
                                  endpoint="203.0.113.7:40000", from_relay=RELAY)),
        (500, bob, ev.EndpointChanged(**base, old_endpoint="203.0.113.7:40000",
                                      new_endpoint="203.0.113.7:40007",
                                      reason="WireGuard heard the peer from a new address")),
        (904, bob_samples, _sample("bob", 10.0, window_s=840.0, windows=28, first=64)),
        (964, bob_samples, _sample("bob", 100.0, window_s=60.0, loss=0.5, windows=2)),
        (970, bob, ev.ReconnectAttempted(**base, attempt=1, max_attempts=3, reason="3 probes lost")),
        (970, bob, _state("bob", "connected", "connecting", "reconnect attempt 1/3: 3 probes lost",
                          "direct")),
        (972, bob, ev.PathChosen(**base, path="relay", reason="no direct candidates", relay=RELAY)),
        (975, bob, _state("bob", "connecting", "connected", "first probe answered", "relay", RELAY)),
        (1000, bob, _state("bob", "connected", "failed", "3 probes lost after 3 attempts", "relay", RELAY)),
        (1100, bob, _state("bob", "failed", "connecting", "the peer announced itself again", "relay", RELAY)),
        (1200, bob, _state("bob", "connecting", "connected", "first probe answered", "relay", RELAY)),
        (1500, node, ev.PublicEndpointChanged(node_id=NODE, old_endpoint="198.51.100.2:51820",
                                              new_endpoint="198.51.100.2:61000",
                                              reason="STUN binding moved")),
        (1800, carol, _state("carol", "connected", "failed", "3 probes lost after 3 attempts")),
        (STOP, node, ev.NodeStopped(node_id=NODE, reason="actor system shut down")),
        (RESTART, node, ev.NodeStarted(node_id=NODE, public_key="K0", listen_port=51820)),
        (RESTART + 5, bob, _state("bob", None, "connecting", "node started")),
        (RESTART + 6, bob, ev.PathChosen(**base, path="direct", reason="punched",
                                         endpoint="203.0.113.7:40007")),
        (RESTART + 10, bob, _state("bob", "connecting", "connected", "first probe answered", "direct")),
        (RESTART + 300, bob, _state("bob", "connected", "connecting", "reconnect attempt 1/3: 3 probes lost",
                                    "direct")),
        (RESTART + 305, bob, _state("bob", "connecting", "connected", "first probe answered", "direct")),
        (CRASH, bob_samples, _sample("bob", None, window_s=300.0, loss=1.0)),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store.sql, "datetime", _Clock)
        with open_store(url, metadata={"node_id": NODE}) as opened:
            for seconds, stream, event in story:
                _Clock.moment = START + timedelta(seconds=seconds)
                opened.append(stream, [event], opened.stream_position(stream))  # type: ignore[list-item]
            last = opened.last_global_position()
            _Clock.moment = START + timedelta(seconds=SECOND_RESTART)
            opened.append(node, [ev.NodeRunEndedAbruptly(
                node_id=NODE, last_global_position=last,
                last_recorded_at=(START + timedelta(seconds=CRASH)).isoformat()),
                ev.NodeStarted(node_id=NODE, public_key="K0", listen_port=51820)],
                opened.stream_position(node))


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process (SQLite's 'localtime'), the sqlite3 shell and psql all in Europe/Berlin."""
    monkeypatch.setenv("TZ", ZONE)
    monkeypatch.setenv("PGTZ", ZONE)
    time.tzset()
    yield ZONE
    monkeypatch.undo()
    time.tzset()


def _session(connection: Connection) -> Connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SET TIME ZONE '{ZONE}'"))
    return connection


def _normalise(value: object) -> str:
    if value is None:
        return ""
    text_ = str(value)
    if re.fullmatch(r"-?\d+\.\d+", text_):
        text_ = text_.rstrip("0").rstrip(".")  # 66.0 (sqlite3) and 66 (psql) are one answer
    return text_


def _rows(lines: list[str]) -> list[str]:
    return ["|".join(_normalise(cell) for cell in line.split("|")) for line in lines]


@pytest.fixture
def filled(any_db_url: str, local_zone: str) -> Iterator[str]:
    fill(any_db_url)
    yield any_db_url


def test_the_document_has_every_example() -> None:
    assert set(examples()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_examples_through_sqlalchemy(filled: str, name: str) -> None:
    engine = create_engine(filled)
    try:
        with engine.connect() as connection:
            rows = _session(connection).execute(text(examples()[name])).all()
    finally:
        engine.dispose()
    assert ["|".join(_normalise(cell) for cell in row) for row in rows] == EXPECTED[name]


def test_examples_in_the_stock_sqlite3_shell(tmp_path: Path, local_zone: str) -> None:
    path = tmp_path / "events.db"
    fill(f"sqlite:///{path}")
    for name, sql in examples().items():
        out = subprocess.run(["sqlite3", "-separator", "|", str(path), sql], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        assert _rows(out) == EXPECTED[name], name


def test_examples_in_psql(pg_url: str, local_zone: str) -> None:
    fill(pg_url)
    url = make_url(pg_url)
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    for name, sql in examples().items():
        out = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", url.host or "127.0.0.1",
             "-p", str(url.port or 5432), "-U", url.username or "", "-d", url.database or "",
             "-AtF|", "-c", sql],
            capture_output=True, text=True, check=True, env=env).stdout.splitlines()
        assert _rows(out) == EXPECTED[name], name


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in _session(connection).execute(text(sql)).all()]
    finally:
        engine.dispose()


def _at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def _moment(value: object) -> datetime:
    """A timestamp column as either database returns it (SQLite: UTC text)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def test_timeline_periods_carry_state_path_and_end(filled: str) -> None:
    rows = _query(filled, "SELECT state, path, path_tried, relay, is_drop, duration_s, ended_by, until_at"
                          " FROM connection_history WHERE peer_name = 'Bob' ORDER BY global_position")
    assert [row[:7] for row in rows] == [
        ("connecting", None, "relay", RELAY, 0, 4, "change"),  # the punch failed: it tried the relay
        ("connected", "relay", "relay", RELAY, 0, 60, "change"),
        ("connected", "direct", "direct", None, 0, 906, "change"),  # the switch keeps its state
        ("connecting", None, "relay", RELAY, 1, 5, "change"),  # the reconnect chose the relay
        ("connected", "relay", "relay", RELAY, 0, 25, "change"),
        ("failed", None, "relay", RELAY, 1, 100, "change"),
        ("connecting", None, "relay", RELAY, 0, 100, "change"),
        ("connected", "relay", "relay", RELAY, 0, 800, "stopped"),  # not 20 h through the night
        ("connecting", None, "direct", None, 0, 5, "change"),
        ("connected", "direct", "direct", None, 0, 290, "change"),
        ("connecting", None, "direct", None, 1, 5, "change"),
        ("connected", "direct", "direct", None, 0, 305, "crashed"),  # until the run's last event
    ]
    assert _moment(rows[7][7]) == _at(STOP)
    assert _moment(rows[-1][7]) == _at(CRASH)
    timeline = _query(filled, "SELECT hour_utc, hour_local FROM peer_timeline WHERE is_drop = 1"
                              " ORDER BY global_position")
    assert timeline == [("2026-11-25 10:00", "2026-11-25 11:00"), ("2026-11-25 10:00", "2026-11-25 11:00"),
                        ("2026-11-25 10:00", "2026-11-25 11:00"), ("2026-11-26 06:00", "2026-11-26 07:00")]


def test_node_stops_and_sample_states(filled: str) -> None:
    stops = _query(filled, "SELECT node_id, how, ended_at, recorded_at FROM node_stops"
                           " ORDER BY global_position")
    assert [(node, how, _moment(ended), _moment(recorded)) for node, how, ended, recorded in stops] == [
        (NODE, "stopped", _at(STOP), _at(STOP)),
        (NODE, "crashed", _at(CRASH), _at(SECOND_RESTART))]  # learnt at the next start
    samples = _query(filled, "SELECT peer_name, path, state, window_s, latency_window_s FROM peer_metrics"
                             " ORDER BY global_position")
    assert samples == [("Bob", "relay", "connected", 30, 30), ("Carol", "direct", "connected", 30, 30),
                       ("Bob", "direct", "connected", 840, 840), ("Bob", "direct", "connected", 60, 60),
                       ("Bob", "direct", "connected", 300, 0)]


def _shell_examples() -> list[list[str]]:
    """The commands of docs/store.md's "From a shell" block."""
    document = (ROOT / "docs" / "store.md").read_text()
    block = document[document.index("```sh\n", document.index("From a shell:")) + 6:]
    return [shlex.split(line) for line in block[:block.index("```")].splitlines()]


def test_the_shell_examples(tmp_path: Path, pg_url: str, local_zone: str) -> None:
    sqlite_command, psql_command = _shell_examples()
    assert (sqlite_command[:2], psql_command[0]) == (["sqlite3", "~/.lanrage/lanrage.db"], "psql")
    path = tmp_path / "lanrage.db"
    fill(f"sqlite:///{path}")
    out = subprocess.run(["sqlite3", str(path), *sqlite_command[2:]], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == 15  # Bob's 12 rows and Carol's 3
    # Bob on the relay from 10:20 UTC until the node stopped (800 s), then the next morning's rows.
    assert "2026-11-25 10:20:00.000000|Bob|connected|relay|800.0|first probe answered" in out
    assert "2026-11-25 10:16:40.000000|Bob|failed||100.0|3 probes lost after 3 attempts" in out

    fill(pg_url)
    url = make_url(pg_url)
    assert psql_command[1].startswith("postgresql://lanrage:lanrage@127.0.0.1/")
    out = subprocess.run(
        ["psql", "-X", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "",
         "-d", url.database or "", "-AF|", *psql_command[2:]],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PGPASSWORD": url.password or ""}).stdout.splitlines()
    header = out[0].split("|")
    rows = [dict(zip(header, line.split("|"), strict=True)) for line in out[1:-1]]
    assert out[-1] == "(1 row)"
    assert [(row["peer_name"], row["event_type"], row["reason"], row["elapsed_ms"]) for row in rows] == [
        ("Bob", "HolePunchFailed", "punch timed out", "2000")]
