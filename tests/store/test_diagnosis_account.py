"""The peer's own account of its side comes first in ``diagnose``, marked as its word."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from events import types as ev
from store.diagnosis import Finding, Window, diagnose, incidents
from tests.store.test_diagnosis import NAMES, RELAY_A, T0, lost, up
from tests.store.test_diagnosis import Log as DiagnosisLog


@pytest.fixture(autouse=True)
def paris(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Log(DiagnosisLog):
    """The diagnosis tests' log, with the accounts among the node's events."""

    def findings(self, peer: str = "bob") -> list[str]:
        return [f"{finding.cause}: {finding.summary}" for finding in self.report(peer)]

    def report(self, peer: str = "bob") -> list[Finding]:
        connection = [r for r in self.records if r.stream_id == f"peer:p:{peer}"]
        node = [r for r in self.records if r.event_type in ("NodeStarted", "PeerAccountReceived")]
        incident = incidents(connection, node)[-1]
        upto = tuple(r for r in connection if r.global_position <= incident.record.global_position)
        window = Window(incident, "p", peer, NAMES[("p", peer)], upto,
                        tuple(r for r in self.records if abs(r.recorded_at - incident.record.recorded_at)
                              <= timedelta(seconds=120)), NAMES, tuple(node))
        return diagnose(window)


def state(peer: str, frm: str | None, to: str, reason: str) -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id=peer, from_state=frm, to_state=to, reason=reason,
                                     path=None if frm is None else "direct")


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def dropped(log: Log, at: float = 184, back: float = 910) -> Log:
    """Bob (and only Bob: Carol stays up) went silent; much later the connection came back."""
    for peer in ("bob", "carol"):
        log.at(0, f"peer:p:{peer}", state(peer, None, "connecting", "peer joined the party"),
               state(peer, "connecting", "connected", "first probe answered"))
    log.at(at - 10, "metrics:p:carol", ev.MetricsSampled(
        party_id="p", peer_id="carol", window_s=30.0, probes=30, latency_ms=20.0, jitter_ms=1.0, loss=0.0,
        rx_bytes=0, tx_bytes=0, quality=90.0))
    log.at(at, "peer:p:bob", state("bob", "connected", "connecting", "reconnect attempt 1/3: 3 probes lost"))
    log.at(back, "peer:p:bob", state("bob", "connecting", "connected", "first probe answered"))
    return log


def told(log: Log, at: float, kind: str, start: float, end: float | None, detail: str = "",
         said_by: str = ev.SAID_BY_PEER) -> Log:
    return log.at(at, "party:me:p", ev.PeerAccountReceived(party_id="p", peer_id="bob", kind=kind,
                                                           started_at=iso(start),
                                                           ended_at="" if end is None else iso(end),
                                                           detail=detail, said_by=said_by))


def test_the_peers_word_about_its_uplink_comes_first() -> None:
    log = told(dropped(Log()), 911, ev.ACCOUNT_UPLINK, 181, 910, "this connection and every relay (1) went "
                                                                 "silent together")
    findings = log.findings()
    # 21:03:01 UTC is 22:03:01 in Paris (CET): what a person there reads.
    assert findings[0] == "remote_uplink_down: Bob's node says its uplink was down 22:03:01-22:15:10 (CET)"
    assert len(findings) >= 2  # this node's own view follows as further evidence


def test_the_peers_word_about_a_crash_names_its_last_sign_of_life() -> None:
    log = told(dropped(Log()), 300, ev.ACCOUNT_CRASHED, 150, 290)
    assert log.findings()[0] == ("remote_crashed: Bob's node says it crashed or was killed: last alive "
                                 "22:02:30, started again 22:04:50 (CET)")


def test_an_account_of_another_moment_or_another_peer_is_not_this_drops() -> None:
    log = told(dropped(Log()), 911, ev.ACCOUNT_UPLINK, 1000, 1100)  # after the drop and its return
    log.at(912, "party:me:p", ev.PeerAccountReceived(party_id="p", peer_id="carol", kind=ev.ACCOUNT_UPLINK,
                                                     started_at=iso(181), ended_at=iso(910)))
    assert not [f for f in log.findings() if f.startswith("remote_uplink_down")]
    assert log.findings()[0].startswith("remote_unreachable: Bob's node became unreachable")


def test_without_an_account_the_rules_are_as_before() -> None:
    assert dropped(Log()).findings()[0].startswith("remote_unreachable: Bob's node became unreachable")


def test_the_control_servers_word_alone_does_not_lead() -> None:
    """A silent control connection is also what loss or a rebinding looks like: this node's own
    rules say more; the server's word is shown with the peer's own."""
    log = told(dropped(Log()), 190, ev.ACCOUNT_OFFLINE, 181, None, said_by=ev.SAID_BY_SERVER)
    log = told(log, 915, ev.ACCOUNT_OFFLINE, 181, 912, said_by=ev.SAID_BY_SERVER)  # then: back
    assert log.findings()[0].startswith("remote_unreachable: Bob's node became unreachable")


def test_both_words_the_peers_first() -> None:
    log = told(dropped(Log()), 190, ev.ACCOUNT_OFFLINE, 181, None, said_by=ev.SAID_BY_SERVER)
    log = told(log, 911, ev.ACCOUNT_UPLINK, 181, 910)
    evidence = [fact.detail for fact in log.report()[0].evidence]
    assert evidence[0].startswith("Bob's own word (received 22:15:11 CET): uplink_down 22:03:01-22:15:10")
    assert evidence[1].startswith("the control server's word (received 22:03:10 CET): offline 22:03:01-")
    assert log.findings()[0] == ("remote_uplink_down: Bob's node says its uplink was down 22:03:01-22:15:10; "
                                 "the control server says Bob's node was silent from 22:03:01 (no heartbeat, "
                                 "no message) (CET)")


def test_the_peers_word_on_its_endpoint_names_the_same_cause_as_this_nodes_rule() -> None:
    log = told(dropped(Log()), 911, ev.ACCOUNT_ENDPOINT, 180, None, "its public endpoint moved from "
               "203.0.113.5:4000 to 203.0.113.5:4100")
    assert log.findings()[0] == ("endpoint_changed: Bob's node says its public endpoint changed at 22:03:00 "
                                 "(CET)")


def alone(log: Log, at: float = 184, back: float = 910) -> Log:
    """Bob is this node's only connection, so its own log cannot tell whose side went silent."""
    log.at(0, "peer:p:bob", state("bob", None, "connecting", "peer joined the party"),
           state("bob", "connecting", "connected", "first probe answered"))
    log.at(at, "peer:p:bob", state("bob", "connected", "connecting", "reconnect attempt 1/3: 3 probes lost"))
    log.at(back, "peer:p:bob", state("bob", "connecting", "connected", "first probe answered"))
    return log


def test_the_control_servers_word_leads_where_this_nodes_log_tells_nothing() -> None:
    assert alone(Log()).findings()[0].startswith("unknown: the cause cannot be told")
    log = told(alone(Log()), 190, ev.ACCOUNT_OFFLINE, 181, None, said_by=ev.SAID_BY_SERVER)
    assert log.findings() == ["remote_silent_to_server: the control server says Bob's node was silent from "
                              "22:03:01 (no heartbeat, no message) (CET)"]


def test_a_move_the_connection_lived_through_does_not_explain_a_later_drop() -> None:
    """In the lab, bob's endpoint moved (a NAT rebinding the pair survived) and 36 s later rising
    loss dropped him: the move is not that drop's cause."""
    log = told(dropped(Log()), 150, ev.ACCOUNT_ENDPOINT, 148, None, "its public endpoint moved from "
               "203.0.113.5:4000 to 203.0.113.5:4100")
    assert not [f for f in log.findings() if f.startswith("endpoint_changed")]
    assert log.findings()[0].startswith("remote_unreachable: Bob's node became unreachable")


def test_the_peers_word_that_the_shared_relay_failed_yields_to_this_nodes_own_sight_of_it() -> None:
    """Both ends used relay A and it died: this node saw it (its monitor's RelayDegraded), so the
    cause is the relay, from its own log; Bob's word that his relay failed, the same fact, is no
    finding of its own."""
    log = up(Log(), "bob", path="relay", relay=RELAY_A)
    log.at(184, "peer:p:bob", lost("bob", "relay", RELAY_A))
    log.at(184.5, f"relay:me:{RELAY_A}", ev.RelayDegraded(relay=RELAY_A, rtt_ms=None, reason="no answer"))
    told(log, 186, ev.ACCOUNT_RELAY, 184, 184, f"its relay {RELAY_A} stopped answering")
    findings = log.findings()
    assert findings[0].startswith(f"relay_died: the relay in use ({RELAY_A}) stopped answering"), findings
    # Without this node's own sight of the relay's death, Bob's word leads.
    alone = up(Log(), "bob", path="relay", relay=RELAY_A)
    alone.at(184, "peer:p:bob", lost("bob", "relay", RELAY_A))
    told(alone, 186, ev.ACCOUNT_RELAY, 184, 184, f"its relay {RELAY_A} stopped answering")
    assert alone.findings()[0].startswith("remote_relay_failed: Bob's node says"), alone.findings()
