"""The example queries of docs/store.md, run as documented, against a log with known times.

Each runs through SQLAlchemy on SQLite and PostgreSQL, in the stock ``sqlite3`` shell
and in ``psql``, and must give the answer worked out by hand below.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import store.sql
from events import types as ev
from store import open_store

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
RELAY = "203.0.113.20:3478"


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
    "drops-per-hour": ["Bob|2026-11-25 10:00|1", "Bob|2026-11-25 11:00|1", "Carol|2026-11-25 10:00|1"],
    # Bob: relay 10:00:04-10:01:04 (60 s) and 10:02:13-11:05:00 (3767 s); direct 10:01:04-10:02:10.
    "time-per-path": ["Bob|direct|66", "Bob|relay|3827", "Carol|direct|1795"],
    "latency-by-path": ["Bob|direct|2|21|0.3", "Bob|relay|1|40|0", "Carol|direct|1|12|0"],
    "why-relayed": ["Bob|HolePunchAttempted|attempted||", "Bob|HolePunchFailed|failed||punch timed out",
                    "Bob|PathChosen|chosen|relay|hole punch failed: punch timed out",
                    "Bob|DirectPathRetried|succeeded||direct path answered",
                    "Bob|PathSwitched|switched|direct|direct path answered",
                    "Bob|PathChosen|chosen|relay|no direct candidates"],
}


def _state(peer: str, frm: str | None, to: str, reason: str, path: str | None = None,
            relay: str | None = None) -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id=peer, from_state=frm, to_state=to, reason=reason,
                                     path=path, relay=relay)


def _sample(peer: str, latency: float, loss: float = 0.0) -> ev.MetricsSampled:
    return ev.MetricsSampled(party_id="p", peer_id=peer, window_s=30.0, probes=30, latency_ms=latency,
                             jitter_ms=1.0, loss=loss, rx_bytes=0, tx_bytes=0, quality=90.0)


def fill(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bob is relayed after a failed punch, upgrades to direct, drops, comes back relayed, fails."""
    monkeypatch.setattr(store.sql, "datetime", _Clock)
    base = {"party_id": "p", "peer_id": "bob"}
    story: list[tuple[float, str, object]] = [
        (0, "party:p", ev.PartyCreated(party_id="p", name="LAN", host_peer_id="me")),
        (0, "party:p", ev.PeerJoined(party_id="p", peer_id="bob", name="Bob", public_key="K1")),
        (0, "party:p", ev.PeerJoined(party_id="p", peer_id="carol", name="Carol", public_key="K2")),
        (0, "peer:p:bob", _state("bob", None, "connecting", "peer joined the party")),
        (1, "peer:p:bob", ev.ConnectionAttemptStarted(**base, attempt=1, path="direct")),
        (1, "peer:p:bob", ev.HolePunchAttempted(**base, local_candidates=("198.51.100.2:51820",),
                                                remote_candidates=("203.0.113.7:40000",))),
        (3, "peer:p:bob", ev.HolePunchFailed(**base, reason="punch timed out", elapsed_ms=2000.0)),
        (3, "peer:p:bob", ev.PathChosen(**base, path="relay", reason="hole punch failed: punch timed out",
                                        relay=RELAY, endpoint="127.0.0.1:40001")),
        (4, "peer:p:bob", _state("bob", "connecting", "connected", "first probe answered", "relay", RELAY)),
        (5, "peer:p:carol", _state("carol", None, "connecting", "peer joined the party")),
        (5, "peer:p:carol", ev.PathChosen(party_id="p", peer_id="carol", path="direct", reason="punched",
                                          endpoint="203.0.113.9:51820")),
        (5, "peer:p:carol", _state("carol", "connecting", "connected", "first probe", "direct")),
        (34, "peer:p:bob", _sample("bob", 40.0)),
        (35, "peer:p:carol", _sample("carol", 12.0)),
        (64, "peer:p:bob", ev.DirectPathRetried(**base, succeeded=True, reason="direct path answered")),
        (64, "peer:p:bob", ev.PathSwitched(**base, from_path="relay", to_path="direct",
                                           reason="direct path answered", endpoint="203.0.113.7:40000",
                                           from_relay=RELAY)),
        (94, "peer:p:bob", _sample("bob", 20.0)),
        (124, "peer:p:bob", _sample("bob", 22.0, 0.3)),
        (130, "peer:p:bob", ev.ReconnectAttempted(**base, attempt=1, max_attempts=3, reason="3 probes lost")),
        (130, "peer:p:bob", _state("bob", "connected", "connecting", "reconnect attempt 1/3: 3 probes lost",
                                   "direct")),
        (132, "peer:p:bob", ev.PathChosen(**base, path="relay", reason="no direct candidates", relay=RELAY)),
        (133, "peer:p:bob", _state("bob", "connecting", "connected", "first probe answered", "relay", RELAY)),
        (1800, "peer:p:carol", _state("carol", "connected", "failed", "3 probes lost after 3 attempts")),
        (3900, "peer:p:bob", _state("bob", "connected", "failed", "3 probes lost after 3 attempts",
                                    "relay", RELAY)),
    ]
    with open_store(url) as opened:
        for seconds, stream, event in story:
            _Clock.moment = START + timedelta(seconds=seconds)
            opened.append(stream, [event], opened.stream_position(stream))  # type: ignore[list-item]
    monkeypatch.undo()


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
def filled(any_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    fill(any_db_url, monkeypatch)
    yield any_db_url


def test_the_document_has_every_example() -> None:
    assert set(examples()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_examples_through_sqlalchemy(filled: str, name: str) -> None:
    engine = create_engine(filled)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(examples()[name])).all()
    finally:
        engine.dispose()
    assert ["|".join(_normalise(cell) for cell in row) for row in rows] == EXPECTED[name]


def test_examples_in_the_stock_sqlite3_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.db"
    fill(f"sqlite:///{path}", monkeypatch)
    for name, sql in examples().items():
        out = subprocess.run(["sqlite3", "-separator", "|", str(path), sql], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        assert _rows(out) == EXPECTED[name], name


def test_examples_in_psql(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(pg_url, monkeypatch)
    url = make_url(pg_url)
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    for name, sql in examples().items():
        out = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", url.host or "127.0.0.1",
             "-p", str(url.port or 5432), "-U", url.username or "", "-d", url.database or "",
             "-AtF|", "-c", sql],
            capture_output=True, text=True, check=True, env=env).stdout.splitlines()
        assert _rows(out) == EXPECTED[name], name


def test_timeline_path_is_the_path_after_the_transition(filled: str) -> None:
    engine = create_engine(filled)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT state, path, relay, is_drop FROM connection_history WHERE peer_name = 'Bob'"
                " ORDER BY global_position")).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [
        ("connecting", "relay", RELAY, 0),   # the punch failed during it: it ended on the relay
        ("connected", "relay", RELAY, 0),
        ("connected", "direct", None, 0),    # the switch keeps the state it happened in
        ("connecting", "relay", RELAY, 1),   # the reconnect chose the relay; not the old direct path
        ("connected", "relay", RELAY, 0),
        ("failed", "relay", RELAY, 1),
    ]
