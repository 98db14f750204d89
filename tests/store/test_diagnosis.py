"""The diagnosis rules, each on a hand-built event sequence, and ``lanrage diagnose`` on a store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

import cli
import store.sql
from events import types as ev
from events.base import Event
from store import open_store
from store.base import RecordedEvent
from store.diagnosis import Finding, StateAt, Window, diagnose, incidents, loss_before_drop, select_nearest

T0 = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)
RELAY_A, RELAY_B = "203.0.113.20:3478", "203.0.113.21:3478"
NAMES = {("p", "bob"): "Bob", ("p", "carol"): "Carol"}


class Log:
    """Events with chosen times: what a node would have written, minus the store."""

    def __init__(self) -> None:
        self.records: list[RecordedEvent] = []
        self.positions: dict[str, int] = {}

    def at(self, seconds: float, stream: str, *events: Event) -> Log:
        for event in events:
            self.positions[stream] = self.positions.get(stream, 0) + 1
            self.records.append(RecordedEvent(len(self.records) + 1, stream, self.positions[stream],
                                              T0 + timedelta(seconds=seconds), event, {"node_id": "me"}))
        return self

    def stream(self, stream: str) -> list[RecordedEvent]:
        return [r for r in self.records if r.stream_id == stream]

    def report(self, peer: str = "bob", index: int = -1, folded: bool = False,
               around: timedelta | None = None) -> list[Finding]:
        """The findings; ``folded``: with the state folded from the whole log, as the command does;
        ``around``: only the rows that near the incident (the command reads two minutes either side)."""
        connection = self.stream(f"peer:p:{peer}")
        found = incidents(connection, [r for r in self.records if r.stream_id == "node:me"])
        incident = found[index]
        upto = tuple(r for r in connection if r.global_position <= incident.record.global_position)
        near = tuple(r for r in self.records if around is None
                     or abs(r.recorded_at - incident.record.recorded_at) <= around)
        state = StateAt(self.records)
        world = state.at(incident.record.global_position) if folded else None
        changes = {stream: self.records[position - 1] for stream, position in state.changes.items()}
        window = Window(incident, "p", peer, NAMES[("p", peer)], upto or tuple(connection),
                        near, NAMES, tuple(self.stream("node:me")), world, changes if folded else {})
        return diagnose(window)

    def findings(self, peer: str = "bob", index: int = -1, folded: bool = False,
                 around: timedelta | None = None) -> list[str]:
        return [f"{finding.cause}: {finding.summary}" for finding in self.report(peer, index, folded, around)]


def state(peer: str, frm: str | None, to: str, reason: str, path: str | None = "direct",
          relay: str | None = None) -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id=peer, from_state=frm, to_state=to, reason=reason,
                                     path=path, relay=relay)


def sample(peer: str, loss: float, latency: float | None = 20.0) -> ev.MetricsSampled:
    return ev.MetricsSampled(party_id="p", peer_id=peer, window_s=30.0, probes=30, latency_ms=latency,
                             jitter_ms=1.0, loss=loss, rx_bytes=0, tx_bytes=0, quality=50.0)


def up(log: Log, peer: str, seconds: float = 0, path: str = "direct", relay: str | None = None) -> Log:
    return log.at(seconds, f"peer:p:{peer}", state(peer, None, "connecting", "peer joined the party", None),
                  state(peer, "connecting", "connected", "first probe answered", path, relay))


def lost(peer: str, path: str = "direct", relay: str | None = None) -> ev.ConnectionStateChanged:
    return state(peer, "connected", "connecting", "reconnect attempt 1/3: 3 probes lost", path, relay)


def test_remote_left_cleanly() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(60, "party:p", ev.PeerLeft(party_id="p", peer_id="bob", reason="left"))
    log.at(60.1, "peer:p:bob", state("bob", "connected", "closed", "left"))
    assert log.findings()[0] == "remote_left: Bob left the party"


def test_this_node_left() -> None:
    log = up(Log(), "bob")
    log.at(60, "party:p", ev.PeerLeft(party_id="p", peer_id="bob", reason="the local node left the party"),
           ev.PartyLeft(party_id="p", reason="user asked"))
    log.at(60.1, "peer:p:bob", state("bob", "connected", "closed", "the local node left the party"))
    assert log.findings()[0] == "local_left: this node left the party (user asked)"


def test_remote_unreachable_while_the_others_stay_up() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(30, "peer:p:carol", sample("carol", 0.0))
    log.at(40, "peer:p:bob", ev.ReconnectAttempted(party_id="p", peer_id="bob", attempt=1, max_attempts=3,
                                                   reason="3 probes lost"), lost("bob"))
    log.at(60, "peer:p:carol", sample("carol", 0.0))
    first = log.findings()[0]
    assert first.startswith("remote_unreachable: Bob's node became unreachable (its uplink or its machine)")
    assert "other connections stayed up (Carol)" in first


def test_remote_unreachable_when_the_control_server_expires_it() -> None:
    log = up(Log(), "bob")
    log.at(40, "peer:p:bob", lost("bob"))
    log.at(100, "party:p", ev.PeerLeft(party_id="p", peer_id="bob", reason="expired"))
    first = log.findings()[0]
    assert first.startswith("remote_unreachable:")
    assert "the control server stopped hearing from it too (expired)" in first


def test_local_uplink_when_every_connection_drops_together() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(40, "peer:p:bob", lost("bob"))
    log.at(43, "peer:p:carol", lost("carol"))
    assert log.findings()[0] == ("local_uplink: this node's uplink went down: every connection dropped "
                                 "within 15 s (Bob, Carol)")


def test_relay_died_and_the_connection_moved() -> None:
    log = up(Log(), "bob", path="relay", relay=RELAY_A)
    log.at(20, f"relay:{RELAY_A}", ev.RelayDegraded(relay=RELAY_A, rtt_ms=None, reason="3 probes unanswered"))
    log.at(20.1, f"relay:{RELAY_B}", ev.RelaySelected(relay=RELAY_B, rtt_ms=3.0, previous_relay=RELAY_A,
                                                      reason="the selected relay degraded"))
    log.at(20.2, "peer:p:bob", ev.PathSwitched(party_id="p", peer_id="bob", from_path="relay",
                                               to_path="relay", reason=f"relay monitor selected {RELAY_B}",
                                               from_relay=RELAY_A, to_relay=RELAY_B))
    assert log.findings()[0] == (f"relay_died: the relay in use ({RELAY_A}) stopped answering and the "
                                 f"connection moved to {RELAY_B}")


# Samples have their own stream (metrics:...); older logs hold them in the connection's stream.
SAMPLE_STREAMS = pytest.mark.parametrize("samples", ["metrics", "peer"])


@SAMPLE_STREAMS
def test_direct_path_failed_and_the_relay_took_over(samples: str) -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(30, "peer:p:bob", ev.PathSwitched(party_id="p", peer_id="bob", from_path="direct", to_path="relay",
                                             reason="3 probes lost on the direct path", to_relay=RELAY_A))
    log.at(60, f"{samples}:p:bob", sample("bob", 0.0, 31.0))
    log.at(60, f"{samples}:p:carol", sample("carol", 0.0))
    assert log.findings() == ["direct_path_failed: the direct path to Bob stopped carrying traffic (a NAT "
                              "or firewall between the two), and the connection moved to the relay "
                              f"{RELAY_A}"]
    # If the relay does not reach Bob either, the drop that follows is explained on its own.
    log.at(80, "peer:p:bob", lost("bob", "relay", RELAY_A))
    assert log.findings(index=-2)[0].startswith("unknown:")
    assert log.findings(index=-1)[0].startswith("remote_unreachable:")


def test_endpoint_changed_before_the_drop() -> None:
    log = up(Log(), "bob")
    log.at(30, "peer:p:bob", ev.EndpointChanged(party_id="p", peer_id="bob", old_endpoint="203.0.113.7:4000",
                                                new_endpoint="203.0.113.7:4711", reason="NAT rebinding"))
    log.at(40, "peer:p:bob", lost("bob"))
    expected = ("endpoint_changed: Bob's endpoint changed from 203.0.113.7:4000 to 203.0.113.7:4711 "
                "(NAT rebinding or a new network): WireGuard now hears it from the new address")
    assert log.findings()[0] == expected
    # The change itself, while the connection was up, is an incident with the same cause.
    assert log.findings(index=-2)[0] == expected


def roamed(log: Log, seconds: float) -> Log:
    return log.at(seconds, "peer:p:bob", ev.EndpointChanged(party_id="p", peer_id="bob",
                                                            old_endpoint="203.0.113.7:4000",
                                                            new_endpoint="203.0.113.7:4711", reason="roamed"))


def test_a_roam_that_kept_working_does_not_explain_a_later_drop() -> None:
    log = roamed(up(up(Log(), "bob"), "carol"), 30)
    log.at(50, "peer:p:carol", sample("carol", 0.0))
    log.at(70, "peer:p:bob", setback("bob", "++~+++++++---"))  # probes answered at the new endpoint
    assert [f.cause for f in log.report()] == ["remote_unreachable"]
    log = roamed(up(up(Log(), "bob"), "carol"), 30)
    log.at(50, "peer:p:carol", sample("carol", 0.0))
    log.at(70, "peer:p:bob", setback("bob", "+++++++++---"))  # the move is older than the record
    assert [f.cause for f in log.report()] == ["remote_unreachable"]
    log = roamed(up(up(Log(), "bob"), "carol"), 30)
    log.at(50, "peer:p:carol", sample("carol", 0.0))
    log.at(40, "peer:p:bob", setback("bob", "++++++~---"))  # nothing answered since the move
    assert log.report()[0].cause == "endpoint_changed"


def test_an_announced_endpoint_change_says_so() -> None:
    log = up(Log(), "bob")
    log.at(30, "peer:p:bob", ev.EndpointChanged(party_id="p", peer_id="bob", old_endpoint="203.0.113.7:4000",
                                                new_endpoint="203.0.113.9:51820", reason="announced",
                                                seen_by=ev.SEEN_IN_ANNOUNCE))
    assert log.findings()[0].endswith("it announced the new address through the control server")


def setback(peer: str, probes: str, handshake_age_s: float | None = None) -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id=peer, from_state="connected",
                                     to_state="connecting", reason="reconnect attempt 1/3: 3 probes lost",
                                     path="direct",
                                     recent_probes=probes, last_handshake_age_s=handshake_age_s)


@pytest.mark.parametrize(("probes", "rise"), [("++++-+---", (4, 1, 2, 3)), ("-++-+++---", (0, 2, 7, 3)),
                                               ("++++++-++++++---", None)])
def test_what_counts_as_loss_before_the_drop(probes: str, rise: tuple[int, int, int, int] | None) -> None:
    assert loss_before_drop(probes) == rise


def test_loss_that_rose_before_the_drop_is_named_before_an_unreachable_peer() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(50, "peer:p:carol", sample("carol", 0.0))
    log.at(70, "peer:p:bob", setback("bob", "++++++++-+--+-+---", 12.0))
    findings = log.findings()
    assert findings[0] == ("loss_rose: loss rose before the drop: after 8 probes answered in a row, 4 of the "
                           "next 7 were lost, then the last 3 in a row")
    assert findings[1].startswith("remote_unreachable:")  # carol stayed up: shown as further evidence


@pytest.mark.parametrize("probes", ["+++++++++++---", "-++++++++++++---", "++-++++++++++++++---"])
def test_a_clean_cut_is_not_loss(probes: str) -> None:
    assert loss_before_drop(probes) is None
    """A cut, or one unlucky probe now and then before it, is not loss that rose."""
    log = up(up(Log(), "bob"), "carol")
    log.at(50, "peer:p:carol", sample("carol", 0.0))
    log.at(70, "peer:p:bob", setback("bob", probes, 12.0))
    findings = log.report()
    assert [f.cause for f in findings] == ["remote_unreachable"]
    assert "last WireGuard handshake 12 s before the drop" in [fact.detail for fact in findings[0].evidence]


def test_a_stale_handshake_says_the_remote_stopped_answering() -> None:
    log = up(Log(), "bob")  # no other connection, no expiry: only WireGuard's handshake tells
    log.at(200, "peer:p:bob", setback("bob", "+++++---", 190.0))
    finding = log.report()[0]
    assert finding.cause == "remote_unreachable"
    assert finding.summary.endswith("WireGuard's last handshake with it was 190 s before the drop")
    assert ("last WireGuard handshake 190 s before the drop: the remote stopped answering"
            in [fact.detail for fact in finding.evidence])


URL = "ws://203.0.113.10:8667"


def control_lost(seconds: float, log: Log) -> Log:
    return log.at(seconds, "node:me", ev.ControlServerUnreachable(node_id="me", control_url=URL,
                                                                  error="connection refused"))


def control_back(seconds: float, log: Log, outage_s: float) -> Log:
    return log.at(seconds, "node:me", ev.ControlServerReachable(node_id="me", control_url=URL,
                                                                outage_s=outage_s))


def test_the_control_server_unreachable_while_the_tunnel_stayed_up() -> None:
    log = up(up(Log(), "bob"), "carol")
    control_lost(30, log)
    log.at(60, "peer:p:bob", sample("bob", 0.0))
    control_back(75, log, 45.2)
    found = log.report()
    assert found[0].cause == "control_unreachable"
    assert found[0].summary == (f"this node could not reach its control server ({URL}, connection refused) "
                                "for 45 s, while the tunnel to Bob stayed up (joins, leaves and relay "
                                "tickets wait for it; traffic does not)")
    details = [fact.detail for fact in found[0].evidence]
    assert details[:2] == ["Bob connected from here on, no drop during the outage",
                           f"{URL}: connection refused"]
    assert details[-1] == f"{URL} answered again after 45.2 s"
    assert "still answering: loss 0 %, latency 20.0 ms" in details


def test_a_drop_during_a_control_outage_names_the_outage() -> None:
    log = up(Log(), "bob")
    control_lost(30, log)
    log.at(40, "peer:p:bob", lost("bob"))
    assert log.findings()[0].startswith(f"control_unreachable: the control server ({URL}) was unreachable "
                                        "when the connection to Bob dropped (connection refused; unreachable "
                                        "with no return recorded)")
    # The outage's own incident says the connection dropped meanwhile.
    assert log.findings(index=-2)[0].endswith("and the connection to Bob dropped meanwhile")


def test_a_cut_uplink_outranks_the_control_outage_it_causes() -> None:
    log = up(up(Log(), "bob"), "carol")
    control_lost(30, log)
    log.at(40, "peer:p:bob", lost("bob"))
    log.at(41, "peer:p:carol", lost("carol"))
    assert log.findings()[0].startswith("local_uplink:")


@SAMPLE_STREAMS
def test_loss_rose_before_the_drop(samples: str) -> None:
    log = up(Log(), "bob")
    log.at(30, f"{samples}:p:bob", sample("bob", 0.0))
    log.at(60, f"{samples}:p:bob", sample("bob", 0.4))
    log.at(70, "peer:p:bob", lost("bob"))
    assert log.findings() == ["loss_rose: loss rose before the drop, to 40 %"]


def test_this_node_crashed_and_restarted() -> None:
    log = Log().at(0, "node:me", ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    up(log, "bob", 1)
    log.at(50, "peer:p:bob", sample("bob", 0.0))
    log.at(90, "node:me", ev.NodeRunEndedAbruptly(node_id="me", last_global_position=4,
                                                   last_recorded_at=(T0 + timedelta(seconds=50)).isoformat()),
           ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    assert log.findings()[0].startswith("local_crashed: this node crashed or was killed")
    # When (ISO 8601 with its offset, which the commands print in the reader's zone) and how long
    # before the start.
    last = (T0 + timedelta(seconds=50)).astimezone(UTC).isoformat()
    assert [fact.detail for fact in log.report()[0].evidence] == [
        f"the previous run's last event was at {last}, 40.0 s before this start (position 4)",
        "this node started again"]
    # Without the NodeRunEndedAbruptly fact (older logs): a start with no stop before it says the same.
    log = Log().at(0, "node:me", ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    up(log, "bob", 1)
    log.at(90, "node:me", ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    assert log.findings()[0].startswith("local_crashed:")


def test_this_node_was_stopped_and_started() -> None:
    log = Log().at(0, "node:me", ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    up(log, "bob", 1)
    log.at(50, "node:me", ev.NodeStopped(node_id="me", reason="SIGTERM"))
    # Down for an hour: the stop is far outside the window around the start, and still found.
    log.at(3650, "node:me", ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    assert log.findings()[0] == "local_stopped: this node was stopped (SIGTERM) and started again"
    # A crash after that clean run is a crash, although a clean stop is in the node's past.
    log.at(3700, "node:me", ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    assert log.findings()[0].startswith("local_crashed:")
    # As the node writes it: the abrupt end first, then its NodeStarted, in one append.
    ended_at = (T0 + timedelta(seconds=3790)).isoformat()
    log.at(3800, "node:me", ev.NodeRunEndedAbruptly(node_id="me", last_global_position=9,
                                                   last_recorded_at=ended_at),
           ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    crashed = log.report()[0]
    assert crashed.cause == "local_crashed"
    assert [fact.event_type for fact in crashed.evidence] == ["NodeRunEndedAbruptly", "NodeStarted"]


def test_an_unexplained_drop_says_so_and_shows_the_facts() -> None:
    log = up(Log(), "bob")
    log.at(40, "peer:p:bob", lost("bob"))
    connection = log.stream("peer:p:bob")
    (incident,) = incidents(connection, [])
    findings = diagnose(Window(incident, "p", "bob", "Bob", tuple(connection), tuple(log.records), NAMES))
    assert [f.cause for f in findings] == ["unknown"]
    assert findings[0].summary.startswith("the cause cannot be told")
    assert [fact.event_type for fact in findings[0].evidence] == ["ConnectionStateChanged"] * 3


def test_no_drop_no_incident() -> None:
    log = up(Log(), "bob")
    log.at(30, "peer:p:bob", state("bob", "connected", "degraded", "latency 300 ms above 250 ms"))
    assert incidents(log.stream("peer:p:bob"), []) == []


class _Clock(datetime):
    moment = T0

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
        return cls.moment


def test_diagnose_command(any_db_url: str, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(store.sql, "datetime", _Clock)
    log = up(up(Log(), "bob"), "carol")
    log.at(0, "party:p", ev.PartyCreated(party_id="p", name="LAN", host_peer_id="me"),
           ev.PeerJoined(party_id="p", peer_id="bob", name="Bob", public_key="K1"),
           ev.PeerJoined(party_id="p", peer_id="carol", name="Carol", public_key="K2"))
    log.at(30, "peer:p:carol", sample("carol", 0.0))
    log.at(40, "peer:p:bob", lost("bob"))
    log.at(60, "peer:p:carol", sample("carol", 0.0))
    log.at(3600, "party:p", ev.PeerLeft(party_id="p", peer_id="bob", reason="left"))
    log.at(3600, "peer:p:bob", state("bob", "connected", "closed", "left"))
    with open_store(any_db_url) as opened:
        for record in sorted(log.records, key=lambda r: r.global_position):
            _Clock.moment = record.recorded_at
            opened.append(record.stream_id, [record.event], record.stream_position - 1)
    monkeypatch.undo()
    assert cli.main(["diagnose", "bob", "--db", any_db_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [i["cause"] for i in report["incidents"]] == ["remote_unreachable", "remote_left"]
    assert report["incidents"][0]["at"] == (T0 + timedelta(seconds=40)).isoformat()
    evidence = report["incidents"][0]["findings"][0]["evidence"]
    assert evidence[0]["detail"] == "connected → connecting: reconnect attempt 1/3: 3 probes lost"
    at = (T0 + timedelta(seconds=50)).isoformat()
    assert cli.main(["diagnose", "Bob", "--db", any_db_url, "--at", at, "--utc"]) == 0
    out = capsys.readouterr().out
    assert "cause: Bob's node became unreachable" in out and "2026-11-25 21:00:40.000" in out
    assert "left the party" not in out  # only the drop at or before --at
    assert cli.main(["diagnose", "carol", "--db", any_db_url]) == 0
    assert "no drop of Carol (carol) in party LAN (p) recorded" in capsys.readouterr().out


TWO_MINUTES = timedelta(seconds=120)


def test_hours_into_a_quiet_party_the_other_connections_come_from_the_folded_state() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(900, "metrics:p:carol", sample("carol", 0.0))
    log.at(4 * 3600 + 7, "peer:p:bob", lost("bob"))  # Carol wrote nothing for hours: she was steady
    # From the rows near the drop alone, nothing says Carol was up.
    assert log.findings(around=TWO_MINUTES)[0].startswith("unknown:")
    first = log.findings(folded=True, around=TWO_MINUTES)[0]
    assert first == ("remote_unreachable: Bob's node became unreachable (its uplink or its machine): it "
                     "stopped answering probes, and this node's other connections stayed up (Carol)")
    evidence = log.report(folded=True, around=TWO_MINUTES)[0].evidence
    assert [(fact.at - T0, fact.detail) for fact in evidence] == [
        (timedelta(hours=4, seconds=7), "connected → connecting: reconnect attempt 1/3: 3 probes lost"),
        (timedelta(0), "Carol connected from here on, up to the drop")]


def test_a_connection_down_in_the_folded_state_is_not_one_that_stayed_up() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(600, "peer:p:carol", lost("carol"))
    log.at(4 * 3600, "peer:p:bob", lost("bob"))
    assert log.findings(folded=True, around=TWO_MINUTES)[0].startswith("unknown:")


def uplink_cut_under_relayed_peer(log: Log) -> Log:
    log.at(40, f"relay:{RELAY_A}", ev.RelayDegraded(relay=RELAY_A, rtt_ms=None, reason="3 probes unanswered"))
    log.at(41, "peer:p:bob", ev.PathSwitched(party_id="p", peer_id="bob", from_path="relay", to_path="relay",
                                             reason=f"relay monitor selected {RELAY_B}", from_relay=RELAY_A,
                                             to_relay=RELAY_B))
    log.at(42, "peer:p:carol", lost("carol"))
    return log


def test_every_path_silent_together_is_this_nodes_uplink_not_the_relay() -> None:
    log = uplink_cut_under_relayed_peer(up(up(Log(), "bob", path="relay", relay=RELAY_A), "carol"))
    found = log.findings(folded=True)
    assert found[0] == ("local_uplink: this node's uplink went down: every connection dropped within 15 s "
                        "(Bob, Carol)")
    assert found[1].startswith(f"relay_died: the relay in use ({RELAY_A}) stopped answering")


def test_a_restored_relay_session_after_a_restart_is_not_an_incident() -> None:
    log = up(Log(), "bob", path="relay", relay=RELAY_A)
    log.at(300, "node:me", ev.NodeStarted(node_id="me", public_key="K", listen_port=51820))
    log.at(301, "peer:p:bob", ev.PathSwitched(party_id="p", peer_id="bob", from_path="relay", to_path="relay",
                                              reason="restore the relay session after a restart",
                                              from_relay=RELAY_A, to_relay=RELAY_A))
    assert [i.kind for i in incidents(log.stream("peer:p:bob"), log.stream("node:me"))] == ["restart"]


def test_a_leave_after_the_connection_came_back_is_not_the_cause() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(55, "peer:p:bob", lost("bob"))
    log.at(65, "peer:p:bob", state("bob", "connecting", "connected", "probe answered"))
    log.at(78, "party:p", ev.PeerLeft(party_id="p", peer_id="bob", reason="left"))
    found = log.report(index=0, folded=True)
    assert found[0].cause == "remote_unreachable"
    assert all(finding.cause != "remote_left" for finding in found)


def test_a_leave_that_followed_the_drop_is_marked_as_what_followed() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(55, "peer:p:bob", state("bob", "connected", "connecting", "reconnect attempt 1/3: 3 probes lost"))
    log.at(57, "party:p", ev.PeerLeft(party_id="p", peer_id="bob", reason="left"))
    found = log.report(folded=True)
    assert found[0].cause == "remote_left"
    assert [(fact.detail, fact.followed) for fact in found[0].evidence] == [("reason: left", True)]
    for finding in found:  # nothing recorded after the drop passes for what led to it
        for fact in finding.evidence:
            assert fact.followed == (fact.at > T0 + timedelta(seconds=55)), (finding.cause, fact)


def test_a_control_blip_under_a_second_is_neither_an_incident_nor_a_cause() -> None:
    log = up(Log(), "bob")
    control_lost(30, log)
    control_back(30.2, log, 0.2)
    log.at(40, "peer:p:bob", lost("bob"))
    assert [i.kind for i in incidents(log.stream("peer:p:bob"), log.stream("node:me"))] == ["drop"]
    assert "control_unreachable" not in " ".join(log.findings())
    log.at(60, "peer:p:bob", state("bob", "connecting", "connected", "probe answered"))
    control_lost(100, log)
    control_back(103, log, 3.0)
    assert log.findings(index=-1)[0].endswith("for 3.0 s, while the tunnel to Bob stayed up (joins, leaves "
                                              "and relay tickets wait for it; traffic does not)")


def test_the_incident_in_the_window_else_the_nearest_within_a_few_minutes() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(184, "peer:p:bob", lost("bob"))  # 21:03:04
    log.at(600, "peer:p:bob", state("bob", "connecting", "connected", "probe answered"))
    log.at(725, "peer:p:bob", lost("bob"))  # 21:12:05
    found = incidents(log.stream("peer:p:bob"), [])
    minute = T0 + timedelta(minutes=3)
    five = timedelta(minutes=5)
    assert select_nearest(found, minute, minute + timedelta(minutes=1), five) == ([found[0]], True)
    before = T0 + timedelta(minutes=1)  # 21:01: the drop 2 min 4 s later is the nearest
    assert select_nearest(found, before, before + timedelta(minutes=1), five) == ([found[0]], False)
    between = T0 + timedelta(minutes=8)  # 21:08: 21:12:05 is 3 min 6 s after the minute's end
    assert select_nearest(found, between, between + timedelta(minutes=1), five) == ([found[1]], False)
    far = T0 + timedelta(minutes=30)
    assert select_nearest(found, far, far + timedelta(minutes=1), five) == ([], False)
    second = T0 + timedelta(seconds=184)
    assert select_nearest(found, second, second + timedelta(seconds=1), five) == ([found[0]], True)


def relay_probed(seconds: float, log: Log, relay: str, answered: int) -> Log:
    return log.at(seconds, f"relay:me:{relay}", ev.RelayProbed(relay=relay, rtt_ms=3.0 if answered else None,
                                                                probes=3, answered=answered))


def test_a_lone_relayed_connection_and_every_relay_silent_is_this_nodes_uplink() -> None:
    log = up(Log(), "bob", path="relay", relay=RELAY_A)
    relay_probed(5, log, RELAY_A, 3)
    relay_probed(5, log, RELAY_B, 3)
    log.at(3 * 3600, f"relay:me:{RELAY_A}", ev.RelayDegraded(relay=RELAY_A, rtt_ms=None, reason="no answer"))
    log.at(3 * 3600 + 1, f"relay:me:{RELAY_B}", ev.RelayDegraded(relay=RELAY_B, rtt_ms=None,
                                                                  reason="no answer"))
    log.at(3 * 3600 + 12, "peer:p:bob", lost("bob", "relay", RELAY_A))
    found = log.findings(folded=True, around=TWO_MINUTES)
    assert found[0] == ("local_uplink: this node's uplink went down: the connection to Bob dropped and "
                        f"every relay stopped answering ({RELAY_A}, {RELAY_B})")
    assert found[1].startswith(f"relay_died: the relay in use ({RELAY_A}) stopped answering")


def test_one_relay_silent_while_another_answers_is_that_relay() -> None:
    log = up(Log(), "bob", path="relay", relay=RELAY_A)
    relay_probed(5, log, RELAY_A, 3)
    relay_probed(5, log, RELAY_B, 3)
    log.at(3 * 3600, f"relay:me:{RELAY_A}", ev.RelayDegraded(relay=RELAY_A, rtt_ms=None, reason="no answer"))
    log.at(3 * 3600 + 12, "peer:p:bob", lost("bob", "relay", RELAY_A))
    assert log.findings(folded=True, around=TWO_MINUTES)[0].startswith(
        f"relay_died: the relay in use ({RELAY_A}) stopped answering")


def test_a_relay_that_answered_again_before_the_drop_is_not_silent() -> None:
    """The lab's case: relay B was degraded half a minute earlier and answers again (the monitor
    selects it, 0.4 ms, as A dies); the drop on A is that relay's death, not this node's uplink."""
    log = up(Log(), "bob", path="relay", relay=RELAY_A)
    relay_probed(5, log, RELAY_A, 3)
    log.at(3 * 3600 - 36, f"relay:me:{RELAY_B}", ev.RelayDegraded(relay=RELAY_B, rtt_ms=None,
                                                                   reason="no answer"))
    log.at(3 * 3600, "peer:p:bob", lost("bob", "relay", RELAY_A))
    log.at(3 * 3600 + 0.5, f"relay:me:{RELAY_A}", ev.RelayDegraded(relay=RELAY_A, rtt_ms=None,
                                                                    reason="no answer"))
    log.at(3 * 3600 + 0.5, f"relay:me:{RELAY_B}", ev.RelaySelected(
        relay=RELAY_B, rtt_ms=0.4, previous_relay=RELAY_A, reason=f"{RELAY_A} stopped answering"))
    found = log.findings(folded=True, around=TWO_MINUTES)
    assert found[0].startswith(f"relay_died: the relay in use ({RELAY_A}) stopped answering"), found
    assert not any(f.startswith("local_uplink") for f in found), found


def mapping_lost(by_router: bool) -> ev.PortMappingLost:
    return ev.PortMappingLost(node_id="me", protocol="pcp", external_ip="203.0.113.100", external_port=51820,
                              reason="the router took the mapping back: it refused the renewal (PCP: not "
                                     "authorized)" if by_router else "the gateway stopped answering",
                              by_router=by_router)


def test_the_router_took_back_the_mapping_before_the_drop() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(1, "node:me", ev.PortMappingObtained(node_id="me", protocol="pcp", gateway="198.51.100.1",
                                               external_ip="203.0.113.100", external_port=51820,
                                               internal_port=51820, lifetime_s=7200))
    log.at(30, "peer:p:carol", sample("carol", 0.0))
    log.at(35, "node:me", mapping_lost(True))
    log.at(40, "peer:p:bob", lost("bob"))
    log.at(60, "peer:p:carol", sample("carol", 0.0))
    first = log.findings()[0]
    clock = (T0 + timedelta(seconds=35)).astimezone().strftime("%H:%M:%S")
    assert first == (f"mapping_taken_back: the router took back the mapping at {clock} (203.0.113.100:51820 "
                     "by pcp): Bob may have reached this node only through it")
    assert log.findings(folded=True)[0].startswith("mapping_taken_back:")


def test_a_mapping_lost_long_before_does_not_explain_a_drop() -> None:
    log = up(up(Log(), "bob"), "carol")
    log.at(5, "node:me", mapping_lost(True))
    log.at(300, "peer:p:carol", sample("carol", 0.0))
    log.at(310, "peer:p:bob", lost("bob"))
    assert not log.findings()[0].startswith("mapping")
