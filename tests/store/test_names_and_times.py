"""Peers by name, and times as people type and read them, through ``cli.main``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import cli
from commands.common import UsageError
from commands.times import parse_time, parse_window, relative_words
from events import types as ev
from store import open_store
from store.peers import AmbiguousPeer, PeerNotFound, PeerRef, resolve_peer
from tests.store.helpers import state


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def kolkata(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def two_parties(any_db_url: str) -> str:
    with open_store(any_db_url) as store:
        store.append("party:p1", [
            ev.PartyCreated(party_id="p1", name="Friday LAN", host_peer_id="me"),
            ev.PeerJoined(party_id="p1", peer_id="me", name="Me", public_key="K0", is_local=True),
            ev.PeerJoined(party_id="p1", peer_id="b0b1", name="Bob", public_key="K1"),
            ev.PeerJoined(party_id="p1", peer_id="c4r0", name="Carol", public_key="K2")], 0)
        store.append("party:p2", [
            ev.PartyJoined(party_id="p2", name="Quake night", local_peer_id="me"),
            ev.PeerJoined(party_id="p2", peer_id="b0b2", name="bob", public_key="K3")], 0)
        store.append("peer:p1:b0b1", [state("b0b1", "connecting"),
                                      state("b0b1", "connected", "connecting")], 0)
        store.append("peer:p1:c4r0", [state("c4r0", "connecting")], 0)
        store.append("peer:p2:b0b2", [state("b0b2", "connecting")], 0)
    return any_db_url


def test_history_by_name_id_prefix_and_party(two_parties: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["history", "bob", "--db", two_parties], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert ("'bob' matches several peers: Bob (b0b1) in party Friday LAN (p1); "
            "bob (b0b2) in party Quake night (p2); give more of the id, or PARTY:NAME") in err
    for query in ("friday lan:bob", "p1:Bob", "b0b1"):
        code, out, _ = run(["history", query, "--db", two_parties, "--json"], capsys)
        assert code == 0, query
        assert {json.loads(line)["stream_id"] for line in out.splitlines()} == {"peer:p1:b0b1"}
    code, out, _ = run(["history", "c4", "--db", two_parties], capsys)
    assert code == 0 and "Carol (c4r0) in party Friday LAN (p1)" in out and "∅ → connecting" in out
    code, out, _ = run(["history", "quake night:bob", "--db", two_parties, "--json"], capsys)
    assert code == 0 and {json.loads(line)["stream_id"] for line in out.splitlines()} == {"peer:p2:b0b2"}
    code, _, err = run(["history", "me", "--db", two_parties], capsys)
    assert code == 2 and "no peer matches 'me'" in err  # this node has no connection to itself


def test_resolution_rules() -> None:
    directory = [PeerRef("p", "bob", "Bob", "LAN", "peer:p:bob"), PeerRef("p", "bobby7", "Bobby", "LAN",
                                                                         "peer:p:bobby7"),
                 PeerRef("q", "bob", "Bob", "Other", "peer:q:bob")]
    # An exact name or id wins over prefixes; one peer id in two parties is one peer.
    assert {entry.stream_id for entry in resolve_peer(directory, "bob")} == {"peer:p:bob", "peer:q:bob"}
    assert [entry.peer_id for entry in resolve_peer(directory, "bobby")] == ["bobby7"]
    assert [entry.stream_id for entry in resolve_peer(directory, "other:bob")] == ["peer:q:bob"]
    with pytest.raises(PeerNotFound, match="known peers: Bob \\(bob\\) in party LAN"):
        resolve_peer(directory, "zed")
    with pytest.raises(AmbiguousPeer, match="'b' matches several peers"):
        resolve_peer(directory, "b")


NOW = datetime(2026, 11, 25, 21, 30, tzinfo=UTC)  # 03:00 next day in Kolkata


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("10m ago", NOW - timedelta(minutes=10)),
    ("-2h", NOW - timedelta(hours=2)),
    ("2h", NOW - timedelta(hours=2)),
    ("1h30m ago", NOW - timedelta(minutes=90)),
    ("90 seconds ago", NOW - timedelta(seconds=90)),
    ("02:15", datetime(2026, 11, 25, 20, 45, tzinfo=UTC)),  # 02:15 IST today, already past
    ("21:03", datetime(2026, 11, 25, 15, 33, tzinfo=UTC)),  # 21:03 IST is still ahead today: last night
    ("yesterday 21:03", datetime(2026, 11, 25, 15, 33, tzinfo=UTC)),
    ("today 01:00:30", datetime(2026, 11, 25, 19, 30, 30, tzinfo=UTC)),
    ("2026-11-25T21:03", datetime(2026, 11, 25, 15, 33, tzinfo=UTC)),  # no offset: local time
    ("2026-11-25 21:03:00+00:00", datetime(2026, 11, 25, 21, 3, tzinfo=UTC)),
    ("2026-11-25T21:03:00Z", datetime(2026, 11, 25, 21, 3, tzinfo=UTC)),
])
def test_time_forms(kolkata: None, text: str, expected: datetime) -> None:
    assert parse_time(text, "--at", now=NOW) == expected


@pytest.mark.parametrize("text, start, seconds", [
    ("21:03", datetime(2026, 11, 25, 15, 33, tzinfo=UTC), 60),  # the whole minute, 21:03:00-21:03:59
    ("yesterday 21:03", datetime(2026, 11, 25, 15, 33, tzinfo=UTC), 60),
    ("2026-11-25T21:03", datetime(2026, 11, 25, 15, 33, tzinfo=UTC), 60),
    ("21:03:04", datetime(2026, 11, 25, 15, 33, 4, tzinfo=UTC), 1),  # the second
    ("2026-11-25T21:03:04Z", datetime(2026, 11, 25, 21, 3, 4, tzinfo=UTC), 1),
    ("21:03:04.5", datetime(2026, 11, 25, 15, 33, 4, 500_000, tzinfo=UTC), 0),  # an instant
    ("10m ago", NOW - timedelta(minutes=10), 0),
    ("now", NOW, 0),
    ("yesterday", datetime(2026, 11, 24, 18, 30, tzinfo=UTC), 86400),  # a local day
    ("2026-11-25", datetime(2026, 11, 24, 18, 30, tzinfo=UTC), 86400),
])
def test_at_names_a_span(kolkata: None, text: str, start: datetime, seconds: int) -> None:
    window = parse_window(text, "--at", now=NOW)
    assert (window.start, (window.end - window.start).total_seconds()) == (start, seconds)


def test_where_a_moment_lies_from_the_span_asked_about(kolkata: None) -> None:
    window = parse_window("21:03", "--at", now=NOW)
    drop = datetime(2026, 11, 25, 15, 33, 4, tzinfo=UTC)
    assert (window.holds(drop), relative_words(window, drop)) == (True, "4 s after 21:03")
    later = drop + timedelta(minutes=2)
    assert (window.holds(later), window.distance(later)) == (False, timedelta(seconds=64, microseconds=1))
    assert relative_words(window, later) == "2 min 4 s after 21:03"
    assert relative_words(window, window.start - timedelta(seconds=90)) == "1 min 30 s before 21:03"
    assert window.last == datetime(2026, 11, 25, 15, 33, 59, 999_999, tzinfo=UTC)


@pytest.mark.parametrize("text", ["21:3", "25:00", "yesterday-ish", "10 parsecs ago", "2h later",
                                  "tomorrow 9:00", "99999d ago", ""])
def test_bad_times_are_one_clear_error(text: str) -> None:
    with pytest.raises(UsageError, match=f"--since: cannot read {text!r} as a time; use 21:03, yesterday"):
        parse_time(text, "--since", now=NOW)


def test_local_zone_utc_switch_and_iso_json(sqlite_url: str, kolkata: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(sqlite_url) as store:
        (record,) = store.append("peer:p:a", [state("a", "connecting")], 0)
    in_kolkata = (record.recorded_at + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%d %H:%M:%S")
    in_utc = record.recorded_at.strftime("%Y-%m-%d %H:%M:%S")
    for command in (["events"], ["sql", "SELECT recorded_at FROM events"], ["history", "a"],
                    ["replay", "--at", "now"]):
        code, out, _ = run([*command, "--db", sqlite_url], capsys)
        assert code == 0 and "IST" in out and "UTC" not in out, command
        code, out, _ = run([*command, "--db", sqlite_url, "--utc"], capsys)
        assert code == 0 and "UTC" in out and "IST" not in out, command
        if command[0] != "replay":
            assert in_utc in out and in_kolkata not in out, command
    code, out, _ = run(["sql", "SELECT recorded_at FROM events", "--db", sqlite_url, "--json"], capsys)
    from_sql = datetime.fromisoformat(json.loads(out)["recorded_at"])
    code, out, _ = run(["events", "--db", sqlite_url, "--json"], capsys)
    from_events = datetime.fromisoformat(json.loads(out)["recorded_at"])
    assert from_sql.utcoffset() == from_events.utcoffset() == timedelta(0)
    assert from_sql == from_events == record.recorded_at


def test_replay_at_a_clock_time(two_parties: str, capsys: pytest.CaptureFixture[str]) -> None:
    clock = (datetime.now() - timedelta(minutes=1)).strftime("%H:%M")
    code, out, _ = run(["replay", "--at", clock, "--db", two_parties, "--json"], capsys)
    assert code == 0 and json.loads(out)["position"] == 0  # a minute ago: before the fixture wrote
    code, out, _ = run(["replay", "--at", "now", "--db", two_parties], capsys)
    assert code == 0 and "Friday LAN" in out


def test_names_from_other_machines_print_as_they_are(sqlite_url: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(sqlite_url) as store:
        store.append("party:p", [
            ev.PartyCreated(party_id="p", name="[/] party", host_peer_id="me"),
            ev.PeerJoined(party_id="p", peer_id="x1", name="[bold red]x[/]", public_key="K")], 0)
        store.append("peer:p:x1", [state("x1", "connecting"), state("x1", "connected", "connecting"),
                                   state("x1", "failed", "connected")], 0)
    for command in (["history", "x1"], ["replay"], ["diagnose", "x1"],
                    ["sql", "SELECT peer_name, party_name FROM peer_names"]):
        code, out, err = run([*command, "--db", sqlite_url], capsys)
        assert code == 0 and err == "", (command, err)
        assert "[bold red]x[/]" in out, command
    code, out, err = run(["events", "--db", sqlite_url], capsys)
    assert code == 0 and err == "" and "name=[bold red]x[/]" in out.replace("\n", "")
