"""Traffic before the first probe: a connecting tunnel that WireGuard shows carrying traffic is up,
so an outage after it is a drop with its own transition (in the lab: pings answered 0.5 s after
the join, the uplink cut, and the log said "connecting" for the whole outage)."""

from __future__ import annotations

import time

from actors import messages as m
from tests.actors.conftest import BOB, Node

BOB_IP = "10.66.0.2"


def _connecting_with_traffic(make_node) -> Node:
    node: Node = make_node()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.net.probe_error = "no route to the probe socket yet"  # the first probes fail
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.net.handshakes["key-bob"] = time.time()
    for _ in range(11):  # traffic flows both ways through the tunnel, second by second
        node.net.carry("local", BOB_IP, 10)
        node.advance(1)
    return node


def test_traffic_before_the_first_answered_probe_is_recorded_as_connected(make_node) -> None:
    node = _connecting_with_traffic(make_node)
    transitions = [line for line in node.described(node.peer("bob")) if line.startswith("ConnectionState")]
    assert transitions[0].startswith("ConnectionStateChanged(from_state=None, to_state='connecting'")
    assert transitions[1].startswith(
        "ConnectionStateChanged(from_state='connecting', to_state='connected', reason='traffic flows before "
        "the first probe was answered: WireGuard handshake "), transitions
    assert " bytes received in 5.0 s'" in transitions[1]
    assert node.connection("p1", "bob").state == "connected"


def test_an_outage_after_traffic_flowed_is_a_drop(make_node) -> None:
    node = _connecting_with_traffic(make_node)
    node.new(node.peer("bob"))
    node.net.probe_error = None
    node.net.block(BOB)  # the cut: nothing gets through any more
    node.advance(40)
    dropped = [line for line in node.new(node.peer("bob"))
               if line.startswith("ConnectionStateChanged(from_state='connected', to_state='connecting'")]
    assert len(dropped) == 1, node.described(node.peer("bob"))


def test_no_traffic_no_connection_before_a_probe(make_node) -> None:
    node: Node = make_node()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.net.probe_error = "no route to the probe socket yet"
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.net.handshakes["key-bob"] = time.time()
    node.advance(12)  # a handshake alone, nothing received: still connecting
    assert node.connection("p1", "bob").state == "connecting"


def test_a_session_from_before_this_attempt_is_no_sign_of_traffic(make_node) -> None:
    """After a 60 s cut, a node saw its 68 s old WireGuard session and the peer's handshake
    initiations (counted as received bytes) and recorded "traffic flows": it stopped its
    reconnect while its probes went to the peer's old NAT mapping."""
    node: Node = make_node()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.net.probe_error = "no route to the probe socket yet"
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.net.handshakes["key-bob"] = time.time() - 68  # a session from before this attempt
    for _ in range(11):
        node.net.carry("local", BOB_IP, 10)
        node.advance(1)
    assert node.connection("p1", "bob").state == "connecting"
