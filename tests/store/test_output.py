"""What ``events``, ``replay``, ``history`` and ``diagnose`` print: local times with their zone,
peers by name, this node's runs in a peer's timeline, and only what a node knows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import cli
from events import types as ev
from store import open_store
from store.sql import EventStore

ROOT = Path(__file__).resolve().parents[2]
RELAY = "198.51.100.7:3478"
# A July evening, in UTC: 21:00 CEST in Berlin, 15:00 EDT in New York.
EVENING = datetime(2026, 7, 10, 19, 0, tzinfo=UTC)


@pytest.fixture(params=["Europe/Berlin", "America/New_York"])
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def local(zone: str, moment: datetime) -> str:
    """How the moment must read in that zone (by hand, not through the code under test)."""
    summer = {"Europe/Berlin": (timedelta(hours=2), "CEST"), "America/New_York": (timedelta(hours=-4), "EDT")}
    offset, name = summer[zone]
    return f"{(moment + offset).strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} {name}"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def cells(out: str, marker: str) -> list[str]:
    """The cells of the one table row that contains ``marker``."""
    (line,) = [line for line in out.splitlines() if marker in line and "│" in line]
    return [cell.strip() for cell in line.split("│")[1:-1]]


def header(out: str) -> list[str]:
    (line,) = [line for line in out.splitlines() if "┃" in line]
    return [cell.strip() for cell in line.split("┃")[1:-1]]


def csc(frm: str | None, to: str, reason: str, path: str, endpoint: str,
        relay: str | None = None) -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id="bob42", from_state=frm, to_state=to,
                                     reason=reason, path=path, endpoint=endpoint, relay=relay)


class Clock:
    def __init__(self) -> None:
        self.now = EVENING

    def __call__(self) -> datetime:
        return self.now


def evening(url: str) -> dict[str, datetime]:
    """Alice's node n1 reaches Bob through a relay from 21:01 CEST, crashes after its last write at
    21:20, starts again the next morning, reaches Bob directly, and is stopped at 08:00."""
    open_store(url).close()
    clock = Clock()
    store = EventStore(url, clock=clock)
    try:
        store.append("node:n1", [
            ev.NodeStarted(node_id="n1", public_key="K0", listen_port=51820),
            ev.NatDetected(node_id="n1", nat_type="open", public_ip="203.0.113.5", public_port=51820)], 0)
        store.append("party:n1:p", [
            ev.PartyCreated(party_id="p", name="lan night", host_peer_id="alice"),
            ev.PeerJoined(party_id="p", peer_id="alice", name="Alice", public_key="K0", is_local=True),
            ev.PeerJoined(party_id="p", peer_id="bob42", name="Bob", public_key="K1", nat_type="symmetric"),
            ev.VirtualIpAllocated(party_id="p", peer_id="bob42", virtual_ip="10.66.0.2")], 0)
        store.append(f"relay:n1:{RELAY}", [ev.RelaySelected(relay=RELAY, rtt_ms=4.0, previous_relay=None,
                                                             reason="lowest round trip", selection=1)], 0)
        clock.now = EVENING + timedelta(minutes=1)
        store.append("peer:n1:p:bob42", [
            csc(None, "connecting", "joined", "relay", "127.0.0.1:40000", RELAY),
            csc("connecting", "connected", "handshake", "relay", "127.0.0.1:40000", RELAY)], 0)
        clock.now = EVENING + timedelta(minutes=20)
        (last,) = store.append("metrics:n1:p:bob42", [ev.MetricsSampled(
            party_id="p", peer_id="bob42", window_s=900.0, probes=90, latency_ms=31.0, jitter_ms=1.0,
            loss=0.0, rx_bytes=1000, tx_bytes=2000, quality=95.0, windows=3,
            first_at=(EVENING + timedelta(minutes=5)).isoformat(timespec="milliseconds"))], 0)
        clock.now = EVENING + timedelta(hours=10)  # 07:00 CEST the next morning
        store.append("node:n1", [
            ev.NodeRunEndedAbruptly(node_id="n1", last_global_position=last.global_position,
                                    last_recorded_at=last.recorded_at.isoformat()),
            ev.NodeStarted(node_id="n1", public_key="K0", listen_port=51820)], 2)
        clock.now = EVENING + timedelta(hours=10, minutes=1)
        store.append("peer:n1:p:bob42", [
            csc("connected", "connecting", "this node restarted", "direct", "192.0.2.9:51820"),
            csc("connecting", "connected", "handshake", "direct", "192.0.2.9:51820")], 2)
        clock.now = EVENING + timedelta(hours=11)
        store.append("node:n1", [ev.NodeStopped(node_id="n1", reason="stopped by the user")], 4)
        clock.now = EVENING + timedelta(hours=12)
        store.append("node:n1", [ev.NodeStarted(node_id="n1", public_key="K0", listen_port=51820)], 5)
    finally:
        store.close()
    return {"crash": last.recorded_at, "during": EVENING + timedelta(hours=2)}


def test_replay_shows_reasons_in_local_time_and_peers_by_name(sqlite_url: str, zone: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    times = evening(sqlite_url)
    during = times["during"].isoformat()
    code, out, _ = run(["replay", "--at", during, "--db", sqlite_url], capsys)
    assert code == 0
    # An ISO time to the second is that second: the state once it is over.
    assert f"at {local(zone, times['during'] + timedelta(milliseconds=999))}" in out.splitlines()[0]
    # Inside the crash's downtime: Bob is interrupted since the node's last write, in local time.
    assert cells(out, "interrupted") == [
        "lan night", "Bob", "interrupted", "relay", RELAY, "-", "-", "0",
        f"node run ended abruptly after {local(zone, times['crash'])}"]
    assert "bob42" not in out and "+00:00" not in out
    code, out, _ = run(["replay", "--at", during, "--utc", "--db", sqlite_url], capsys)
    assert cells(out, "interrupted")[-1] == "node run ended abruptly after 2026-07-10 19:20:00.000 UTC"
    code, out, _ = run(["replay", "--at", during, "--json", "--db", sqlite_url], capsys)
    reason = json.loads(out)["connections"]["peer:n1:p:bob42"]["reason"]
    assert reason == f"node run ended abruptly after {times['crash'].isoformat()}"  # JSON keeps ISO 8601


def test_replay_shows_only_what_a_node_knows(any_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    evening(any_db_url)
    code, out, _ = run(["replay", "--at", (EVENING + timedelta(minutes=2)).isoformat(), "--db", any_db_url],
                       capsys)
    assert code == 0
    # The node's NAT is the same under nodes and under parties (it joined before STUN answered).
    assert cells(out, "n1") == ["n1", "Alice", "yes", "open", "203.0.113.5:51820", RELAY]
    assert cells(out, "Alice (this node)") == ["lan night", "yes", "Alice (this node)", "-", "open"]
    assert cells(out, "10.66.0.2") == ["", "", "Bob", "10.66.0.2", "symmetric"]
    # A relayed peer is reached at the relay, not at this node's local proxy 127.0.0.1:PORT.
    assert cells(out, "handshake") == ["lan night", "Bob", "connected", "relay", RELAY, "-", "-", "0",
                                       "handshake"]
    assert "127.0.0.1" not in out
    # The relay monitor's view; a relay server's sessions and its running state are not in a node's log.
    relays = [line for line in out.splitlines() if "answered/probes" in line]
    assert [cell.strip() for cell in relays[0].split("┃")[1:-1]] == [
        "relay", "selected", "rtt ms", "answered/probes", "degraded"]
    assert cells(out, "0/0") == [RELAY, "yes", "-", "0/0", "no"]


def test_events_name_the_peer_and_show_payload_times_in_local_time(
        sqlite_url: str, zone: str, capsys: pytest.CaptureFixture[str]) -> None:
    times = evening(sqlite_url)
    code, out, _ = run(["events", "--db", sqlite_url], capsys)
    assert code == 0
    summer = "CEST" if zone == "Europe/Berlin" else "EDT"
    assert header(out)[1] == f"time ({summer})"  # the zone of the rows, whatever the date today
    connected = cells(out, "reason=handshake path=relay")  # the first connection, in its own stream
    assert connected[2:6] == ["peer:n1:p:bob42", "Bob", "2", "ConnectionStateChanged"]
    allocated = cells(out, "VirtualIpAllocated")  # a party event about Bob
    assert allocated[2:4] == ["party:n1:p", "Bob"]
    assert cells(out, "MetricsSampled")[3] == "Bob"  # in the connection's metrics stream
    crash = cells(out, "NodeRunEndedAbruptly")
    assert crash[3] == "" and f"last_recorded_at={local(zone, times['crash'])}" in crash[-1]
    assert "+00:00" not in out
    code, out, _ = run(["events", "--db", sqlite_url, "--type", "MetricsSampled", "--json"], capsys)
    assert json.loads(out)["payload"]["first_at"] == "2026-07-10T19:05:00.000+00:00"


def test_a_table_across_a_daylight_saving_change_names_each_rows_zone(
        sqlite_url: str, zone: str, capsys: pytest.CaptureFixture[str]) -> None:
    open_store(sqlite_url).close()
    clock = Clock()
    clock.now = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    with EventStore(sqlite_url, clock=clock) as store:
        store.append("peer:n1:p:bob42", [csc(None, "connecting", "winter", "direct", "192.0.2.9:51820")], 0)
        clock.now = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
        store.append("peer:n1:p:bob42",
                     [csc("connecting", "connected", "summer", "direct", "192.0.2.9:51820")], 1)
    winter, summer = {
        "Europe/Berlin": ("2026-01-15 13:00:00.000 CET", "2026-07-15 14:00:00.000 CEST"),
        "America/New_York": ("2026-01-15 07:00:00.000 EST", "2026-07-15 08:00:00.000 EDT")}[zone]
    for command in (["events"], ["history", "bob42"]):
        code, out, _ = run([*command, "--db", sqlite_url], capsys)
        assert code == 0, command
        assert cells(out, "winter")[1] == winter and cells(out, "summer")[1] == summer, command
        assert header(out)[1] == "time", command


def test_history_shows_this_nodes_crash_restart_and_stop(any_db_url: str, zone: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    times = evening(any_db_url)
    code, out, _ = run(["history", "bob", "--db", any_db_url], capsys)
    assert code == 0
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    events = [(row[2], row[3]) for row in rows if row[2] and row[2] != "event"]
    assert events == [
        ("ConnectionStateChanged", "∅ → connecting"), ("ConnectionStateChanged", "connecting → connected"),
        ("NodeRunEndedAbruptly", "this node went down"), ("NodeStarted", "this node started"),
        ("ConnectionStateChanged", "connected → connecting"),
        ("ConnectionStateChanged", "connecting → connected"),
        ("NodeStopped", "this node stopped")]  # not the start before the first connection, nor the one after
    # A state lasts until the node's run ended, not through the night it was down.
    connected = [row for row in rows if row[3] == "connecting → connected"]
    assert [row[6] for row in connected] == ["≥ 19.0 min", "59.0 min"]
    assert cells(out, "this node went down")[-1] == (
        f"no clean stop; its last event was at {local(zone, times['crash'])}")
    assert cells(out, "this node stopped")[-1] == "stopped by the user"
    code, out, _ = run(["history", "bob", "--json", "--db", any_db_url], capsys)
    assert [json.loads(line)["event_type"] for line in out.splitlines()].count("NodeStarted") == 1


def test_diagnose_shows_the_crash_evidence_in_local_time(sqlite_url: str, zone: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    times = evening(sqlite_url)
    code, out, _ = run(["diagnose", "bob", "--db", sqlite_url], capsys)
    assert code == 0
    assert local(zone, times["crash"]) in out
    # The zone the times are in, whatever the date today (a July log read in December).
    assert f"(times in {'CEST' if zone == 'Europe/Berlin' else 'EDT'})" in out.splitlines()[0]
    assert "19:20:00" not in out and "+00:00" not in out
    code, out, _ = run(["diagnose", "bob", "--utc", "--db", sqlite_url], capsys)
    assert "2026-07-10 19:20:00.000 UTC" in out


def test_follow_says_it_waits_and_names_the_peer(sqlite_url: str) -> None:
    evening(sqlite_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TZ": "Europe/Berlin"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "events", "--follow", "--stream", "peer:", "--db", sqlite_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None and process.stderr is not None
        backlog = [process.stdout.readline() for _ in range(4)]
        assert all("peer:n1:p:bob42 (Bob)" in line for line in backlog), backlog
        assert local("Europe/Berlin", EVENING + timedelta(minutes=1)) in backlog[0]
        assert process.stderr.readline() == "waiting for new events (Ctrl-C to stop)\n"
        with open_store(sqlite_url) as store:
            store.append("party:n1:p", [ev.PeerJoined(party_id="p", peer_id="c4r0", name="Carol",
                                                      public_key="K2")], 4)
            store.append("peer:n1:p:c4r0", [ev.ConnectionStateChanged(
                party_id="p", peer_id="c4r0", from_state=None, to_state="connecting", reason="joined",
                path="direct", endpoint="192.0.2.10:51820")], 0)
        assert "peer:n1:p:c4r0 (Carol)" in process.stdout.readline()  # a peer that joined while following
        process.terminate()
        assert process.wait(10) == 0
        assert process.stderr.read() == ""  # said once
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_db_stats_and_prune_print_local_times(sqlite_url: str, zone: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    evening(sqlite_url)
    code, out, _ = run(["db", "stats", "--db", sqlite_url], capsys)
    assert code == 0 and cells(out, "all")[3] == local(zone, EVENING)
    code, out, _ = run(["db", "prune", "--keep", "1d", "--db", sqlite_url], capsys)
    cutoff = out.split(" recorded before ")[1].split(" from ")[0]
    clock, name = cutoff.rsplit(" ", 1)
    assert code == 0 and name in {"Europe/Berlin": ("CET", "CEST"), "America/New_York": ("EST", "EDT")}[zone]
    wall = datetime.strptime(clock, "%Y-%m-%d %H:%M:%S.%f")  # the local wall clock a day ago
    assert abs((datetime.now() - timedelta(days=1) - wall).total_seconds()) < 60


def test_replay_of_a_shared_database_says_whose_view_each_row_is(sqlite_url: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for node, name in (("n1", "Alice"), ("n2", "Carol")):
        with open_store(sqlite_url, metadata={"node_id": node}) as store:
            store.append(f"party:{node}:p", [
                ev.PartyJoined(party_id="p", name="lan night", local_peer_id=node),
                ev.PeerJoined(party_id="p", peer_id=node, name=name, public_key=f"K{node}", is_local=True),
                ev.PeerJoined(party_id="p", peer_id="bob42", name="Bob", public_key="K1")], 0)
            store.append(f"peer:{node}:p:bob42", [csc(None, "connecting", f"dialled by {node}", "direct",
                                                      "192.0.2.9:51820")], 0)
    code, out, _ = run(["replay", "--db", sqlite_url], capsys)
    assert code == 0
    assert cells(out, "dialled by n1")[:3] == ["n1", "lan night", "Bob"]
    assert cells(out, "dialled by n2")[:3] == ["n2", "lan night", "Bob"]
    assert cells(out, "Carol (this node)")[:4] == ["n2", "lan night", "yes", "Carol (this node)"]
