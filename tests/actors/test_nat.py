"""The node records its NAT detection on the node stream: once, and again only when it changes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from actors import messages as m
from events.fold import NodeState, apply_node, fold_stream
from mesh import sim
from tests.actors.conftest import BOB, CAROL, LOCAL, RELAY_A, Node

DETECTED = ("NatDetected(node_id='local', nat_type='open', public_ip='203.0.113.1', public_port=51820, "
            "local_ip='192.0.2.1', local_port=51820, stun_server='sim-stun')")


def silent_stun(**kwargs: Any) -> sim.SimAdapters:
    """The simulated adapters with no STUN answer."""
    return replace(sim.adapters(**kwargs), nat_detector=sim.SimNatDetector(None))


def nat_rows(node: Node) -> list[str]:
    return [row for row in node.described(node.node_stream) if row.startswith("Nat")]


def test_the_nat_is_recorded_once_and_restarts_add_nothing(make_node) -> None:
    node = make_node()
    assert nat_rows(node) == [DETECTED]
    node.stop()
    node.start()
    assert nat_rows(node) == [DETECTED]
    state = fold_stream(apply_node, NodeState(), node.events(node.node_stream))
    assert (state.nat_type, state.public_endpoint, state.relay_only) == ("open", "203.0.113.1:51820", False)


def restart_with(node: Node, factory: str, **kwargs: Any) -> None:
    """Restart ``node`` on the same store with other simulated adapters."""
    node.stop()
    node.start(m.AdapterSpec.of(factory, network_name=node.name, node="local", candidates=(LOCAL,), **kwargs))


def test_no_stun_answer_is_recorded_as_relay_only(make_node) -> None:
    node = make_node()
    restart_with(node, "tests.actors.test_nat:silent_stun")
    assert nat_rows(node) == [
        DETECTED,
        "NatDetectionFailed(node_id='local', reason='no STUN answer (or no STUN server configured)', "
        "stun_servers=())"]
    assert fold_stream(apply_node, NodeState(), node.events(node.node_stream)).relay_only


def test_direct_is_tried_unless_both_sides_are_symmetric(make_node) -> None:
    node = make_node(relays=(RELAY_A,))
    restart_with(node, "mesh.sim:adapters", nat_type="symmetric")
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", nat_type="symmetric", candidates=(BOB,)))
    node.tell(m.PeerAnnounced("p1", "carol", "Carol", "key-carol", nat_type="port_restricted",
                              candidates=(CAROL,)))
    node.advance(5)
    assert node.new(node.peer("bob"))[2:6] == [
        "ConnectionAttemptStarted(attempt=1, path='relay')",
        f"RelayAllocationRequested(relay='{RELAY_A}', purpose='fallback')",
        f"RelaySessionOpened(relay='{RELAY_A}', session_id='p1/bob', endpoint='{RELAY_A}')",
        f"PathChosen(path='relay', reason='both sides are behind symmetric NATs', endpoint='{RELAY_A}', "
        f"relay='{RELAY_A}')"]
    assert node.new(node.peer("carol"))[2:8] == [  # relay first, the punch behind it
        "ConnectionAttemptStarted(attempt=1, path='direct')",
        f"RelayAllocationRequested(relay='{RELAY_A}', purpose='relay first')",
        f"RelaySessionOpened(relay='{RELAY_A}', session_id='p1/carol', endpoint='{RELAY_A}')",
        f"PathChosen(path='relay', reason='relay first while the hole punch runs', endpoint='{RELAY_A}', "
        f"relay='{RELAY_A}')",
        f"WireGuardPeerConfigRequested(public_key='key-carol', endpoint='{RELAY_A}', "
        "allowed_ips=('10.66.0.3/32',), keepalive_s=25)",
        "HolePunchAttempted(local_candidates=('203.0.113.1:51820',), "
        "remote_candidates=('203.0.113.3:51820',))"]
    node.advance(60)  # no periodic direct retry between two symmetric NATs
    assert not [e for e in node.new(node.peer("bob")) if e.startswith(("HolePunch", "DirectPath"))]
    assert node.connection("p1", "bob").path == "relay"


def test_a_moved_public_mapping_is_recorded_once_and_folded(make_node) -> None:
    """The agent saw the WireGuard port at another public endpoint: one row a move, none for
    the same answer again, and nonsense is rejected."""
    node = make_node()
    moved = ("203.0.113.1:20007",)
    node.tell(m.PublicEndpointMoved("203.0.113.1:20007", "periodic check", "sim-stun", moved))
    node.tell(m.PublicEndpointMoved("203.0.113.1:20007", "periodic check", "sim-stun"))
    node.tell(m.PublicEndpointMoved("x" * 100, "hostile"))
    node.drain()
    rows = [row for row in node.described(node.node_stream) if "Endpoint" in row or "Rejected" in row]
    assert rows == [
        "PublicEndpointChanged(node_id='local', old_endpoint='203.0.113.1:51820', "
        "new_endpoint='203.0.113.1:20007', reason='periodic check', stun_server='sim-stun')",
        "MessageRejected(actor='node', message_type='PublicEndpointMoved', "
        "reason='new_endpoint must be host:port')"]
    state = fold_stream(apply_node, NodeState(), node.events(node.node_stream))
    assert state.public_endpoint == "203.0.113.1:20007"
    node.stop()
    node.start()  # a restart's own detection is the truth again: it differs, so it is recorded
    assert nat_rows(node) == [DETECTED, DETECTED]
