"""Killing actors mid-scenario: the restart recovers the same state from the stored events,
nothing is lost, and no WireGuard change is made twice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from thespian.actors import ActorExitRequest

from actors import messages as m
from events.fold import ConnectionState, apply_connection, fold_stream
from mesh.sim import SimWireGuard
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
            assert node.recorder.stream_position(node.peer("bob")) == positions
            assert node.net.wireguard_log == changes


@pytest.mark.parametrize(("hosting", "interrupt"), [
    ("process", kill_peer_actor),
    ("process", kill_party_actor),
    ("inline", kill_party_actor),
    ("process", restart_node),
    ("inline", restart_node),
])
@pytest.mark.parametrize("after", ["connect", "slow", "blocked", "retry"])
def test_kill_mid_scenario_recovers_without_loss_or_duplicate(make_node, hosting: str, interrupt: Step,
                                                             after: str) -> None:
    reference = make_node(hosting, relays=(RELAY_A,))
    run(reference, None, None)
    node = make_node(hosting, relays=(RELAY_A,))
    run(node, after, interrupt)
    assert node.described(node.peer("bob")) == reference.described(node.peer("bob"))
    assert node.described(node.party()) == reference.described(node.party())
    assert node.net.wireguard_log == reference.net.wireguard_log
    assert node.connection("p1", "bob") == reference.connection("p1", "bob") == replayed(node, "bob")
    assert node.connection("p1", "bob").path == "direct"


@pytest.mark.parametrize("hosting", ["inline", "process"])
def test_crash_between_persist_and_act_redoes_the_change_once(make_node, monkeypatch, hosting: str) -> None:
    """The failover's events are stored, then WireGuard fails: the rebuilt actor reconciles."""
    node = make_node(hosting, relays=(RELAY_A,))
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    original = SimWireGuard.configure_peer
    failures = []

    def flaky(self, public_key, endpoint, allowed_ips, keepalive_s=25):  # type: ignore[no-untyped-def]
        if endpoint == RELAY_A and not failures:
            failures.append(endpoint)
            raise RuntimeError("the interface went away")
        original(self, public_key, endpoint, allowed_ips, keepalive_s)

    monkeypatch.setattr(SimWireGuard, "configure_peer", flaky)
    node.net.block(BOB)
    node.advance(15)
    assert failures == [RELAY_A]
    types = [e.event_type for e in node.events(node.peer("bob"))]
    assert types[-2:] == ["PathSwitched", "WireGuardPeerConfigured"]
    assert types.count("PathSwitched") == 1
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB),
                                                   ("configure", "key-bob", RELAY_A)]
    assert node.connection("p1", "bob") == replayed(node, "bob")
    node.advance(20)
    assert node.net.wireguard_changes("local")[-1] == ("configure", "key-bob", RELAY_A)
    assert len(node.net.wireguard_changes("local")) == 2


@pytest.mark.parametrize("leaving", ["the local node", "the peer"])
def test_a_connection_awaiting_its_restart_is_still_closed(make_node, leaving: str) -> None:
    """A leave while a crashed peer actor waits for its restart still removes its WireGuard peer."""
    node = make_node("process")
    node.stop()
    node.config = replace(node.config, restart_delay_s=5.0)
    node.start()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    assert node.connection("p1", "bob").state == "connected"
    seen = len(node.events(node.peer("bob")))
    kill_peer_actor(node)
    assert "bob" not in children(node, children(node, node.address)["p1"])  # restart pending
    if leaving == "the peer":
        node.tell(m.PeerDeparted("p1", "bob", "left the party"))
        reason = "left the party"
    else:
        assert node.ask(m.LeaveParty("p1")) == m.PartyClosed("p1", "left by the user")
        reason = "the local node left the party"
    assert node.described(node.peer("bob"))[seen:] == [
        f"WireGuardPeerRemoved(public_key='key-bob', reason='{reason}')",
        f"ConnectionStateChanged(from_state='connected', to_state='closed', reason='{reason}', "
        "path='direct', endpoint='203.0.113.2:51820', relay=None, latency_ms=None)"]
    node.advance(10)  # the pending restart finds nothing to restart
    assert len(node.events(node.peer("bob"))) == seen + 2
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB), ("remove", "key-bob", None)]
