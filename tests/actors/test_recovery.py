"""Killing actors mid-scenario: the restart recovers the same state from the stored events,
nothing is lost, and no WireGuard change is made twice."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import pytest
from thespian.actors import ActorExitRequest

from actors import messages as m
from events.fold import ConnectionState, apply_connection, fold_stream
from tests.actors.conftest import BOB, RELAY_A, Node

Step = Callable[[Node], None]


def children(node: Node, address: object) -> dict[str, object]:
    reply = node.system.ask(address, m.ChildrenQuery())
    assert isinstance(reply, m.ChildAddresses)
    return dict(reply.children)


def kill_peer_actor(node: Node) -> None:
    party = children(node, node.address)["p1"]
    node.system.tell(children(node, party)["bob"], ActorExitRequest())


def kill_party_actor(node: Node) -> None:
    node.system.tell(children(node, node.address)["p1"], ActorExitRequest())


def restart_node(node: Node) -> None:
    node.stop()
    node.start()


def replayed(node: Node, peer: str) -> ConnectionState:
    return fold_stream(apply_connection, ConnectionState(), node.events(node.peer(peer)))


SCENARIO: list[tuple[str, Step]] = [
    ("create", lambda n: n.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))),
    ("join", lambda n: n.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))),
    ("connect", lambda n: n.advance(5)),
    ("slow", lambda n: (n.net.set_latency("10.66.0.2", 250.0), n.advance(5))),
    ("blocked", lambda n: (n.net.block(BOB), n.advance(15))),  # fails over to the relay
    ("retry", lambda n: n.advance(30)),
    ("unblocked", lambda n: (n.net.unblock(BOB), n.net.set_latency("10.66.0.2", 30.0), n.advance(30))),
    ("settle", lambda n: n.advance(10)),
]


def run(node: Node, interrupt_after: str | None, interrupt: Step | None) -> None:
    for name, step in SCENARIO:
        step(node)
        if name == interrupt_after and interrupt is not None:
            before = node.connection("p1", "bob")
            positions = node.recorder.stream_position(node.peer("bob"))
            changes = list(node.net.wireguard_log)
            interrupt(node)
            node.ask(m.Ping())  # the supervisor's restart wakeup (restart_delay_s=0 in tests)
            assert node.connection("p1", "bob") == before == replayed(node, "bob")
            # A crashed actor says so in its stream; nothing else is written, nothing redone
            # (a stop records what the next decisions read, and nothing else).
            added = [line for line in node.described(node.peer("bob"))[positions:]
                     if not line.startswith("DecisionInputsRecorded(")]
            assert added == ([] if interrupt is not kill_peer_actor else
                             ["ActorRestarted(actor='peer-connection/p1/bob', "
                              "reason='the actor exited unexpectedly')"])
            assert node.net.wireguard_log == changes


def without_restarts(lines: list[str]) -> list[str]:
    """Without the restart's own record, and without the probe outcomes a setback shows: those
    are the memory of one incarnation, and a restarted actor starts them afresh."""
    return [re.sub(r", recent_probes='[+~-]*'", "", line) for line in lines
            if not line.startswith(("ActorRestarted(", "DecisionInputsRecorded("))]


@pytest.mark.parametrize("interrupt", [kill_peer_actor, kill_party_actor, restart_node])
@pytest.mark.parametrize("after", ["connect", "slow", "blocked", "retry"])
def test_kill_mid_scenario_recovers_without_loss_or_duplicate(make_node, interrupt: Step,
                                                             after: str) -> None:
    reference = make_node(relays=(RELAY_A,))
    run(reference, None, None)
    node = make_node(relays=(RELAY_A,))
    run(node, after, interrupt)
    assert without_restarts(node.described(node.peer("bob"))) == without_restarts(
        reference.described(node.peer("bob")))
    assert without_restarts(node.described(node.party())) == reference.described(node.party())
    assert node.net.wireguard_log == reference.net.wireguard_log
    assert node.connection("p1", "bob") == reference.connection("p1", "bob") == replayed(node, "bob")
    assert node.connection("p1", "bob").path == "direct"


def test_a_failed_wireguard_change_is_recorded_and_retried_until_it_holds(make_node) -> None:
    """The failover's decision is stored, WireGuard refuses: the log says so, and the change is
    made as soon as WireGuard takes it (1 s, then doubling), not at the next restart."""
    node = make_node(relays=(RELAY_A,))
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    node.new(node.peer("bob"))
    node.net.wireguard_error = "the interface went away"
    node.net.block(BOB)
    node.advance(15)
    failed = ("WireGuardPeerChangeFailed(public_key='key-bob', operation='configure', "
              "error='the interface went away')")
    assert [line.split("(")[0] for line in node.new(node.peer("bob"))] == [
        "RelayAllocationRequested", "RelaySessionOpened", "PathSwitched", "WireGuardPeerConfigRequested",
        "WireGuardPeerChangeFailed"]
    assert not node.connection("p1", "bob").wireguard_applied
    node.advance(3)  # retried after 1 s and 2 s: the same failure is not written again
    assert node.new(node.peer("bob")) == []
    assert node.described(node.peer("bob")).count(failed) == 1
    node.net.wireguard_error = None
    node.advance(4)
    assert node.new(node.peer("bob"))[0] == (
        f"WireGuardPeerConfigured(public_key='key-bob', endpoint='{RELAY_A}', allowed_ips=('10.66.0.2/32',), "
        "keepalive_s=25, decided_here=False)")
    assert node.connection("p1", "bob").wireguard_applied
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB),
                                                   ("configure", "key-bob", RELAY_A)]
    assert node.connection("p1", "bob") == replayed(node, "bob")


@pytest.mark.parametrize("leaving", ["the local node", "the peer"])
def test_a_connection_awaiting_its_restart_is_still_closed(make_node, leaving: str) -> None:
    """A leave while a crashed peer actor waits for its restart still removes its WireGuard peer."""
    node = make_node()
    node.stop()
    node.config = replace(node.config, restart_delay_s=5.0)
    node.start()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    assert node.connection("p1", "bob").state == "connected"
    kill_peer_actor(node)  # a stop records what the next decisions read: counted in ``seen``
    seen = len(node.events(node.peer("bob")))
    assert "bob" not in children(node, children(node, node.address)["p1"])  # restart pending
    if leaving == "the peer":
        node.tell(m.PeerDeparted("p1", "bob", "left the party"))
        reason = "left the party"
    else:
        assert node.ask(m.LeaveParty("p1")) == m.PartyClosed("p1", "left by the user")
        reason = "the local node left the party"
    assert node.described(node.peer("bob"))[seen:] == [
        f"WireGuardPeerRemovalRequested(public_key='key-bob', reason='{reason}')",
        f"ConnectionStateChanged(from_state='connected', to_state='closed', reason='{reason}', "
        "path='direct', endpoint='203.0.113.2:51820', relay=None, latency_ms=None)",
        "WireGuardPeerRemoved(public_key='key-bob', reason='as decided', decided_here=False)"]
    node.advance(10)  # the pending restart finds nothing to restart
    assert len(node.events(node.peer("bob"))) == seen + 3
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB), ("remove", "key-bob", None)]


@pytest.mark.parametrize("after_sample", ["nothing", "a transition"])
def test_a_restarted_connection_holds_the_figures_the_replay_shows(make_node, after_sample: str) -> None:
    """Samples have their own stream: a restart folds the newest one and the transitions after it."""
    node = make_node(metrics_interval_s=60.0)
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.net.set_latency("10.66.0.2", 30.0)
    node.advance(62)
    if after_sample == "a transition":
        node.net.set_latency("10.66.0.2", 250.0)
        node.advance(5)  # connected -> degraded keeps the sample's jitter and loss
    before = node.connection("p1", "bob")
    assert before.jitter_ms is not None and before.rx_bytes == 0 and before.latency_ms is not None
    kill_peer_actor(node)
    node.ask(m.Ping())
    after = node.connection("p1", "bob")
    records = list(node.recorder.read_all())
    samples = "metrics" + node.peer("bob")[len("peer"):]
    replay = fold_stream(apply_connection, ConnectionState(),
                         [r.event for r in records if r.stream_id in (node.peer("bob"), samples)])
    assert after == replay == before
