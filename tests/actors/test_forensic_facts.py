"""The facts ``diagnose`` needs, as the actors record them on the simulated network.

A roamed or re-announced endpoint (once a change), WireGuard's handshake age and the
recent probes on a setback, and the control plane lost and back (once a transition).
"""

from __future__ import annotations

import re
import time

from actors import messages as m
from events import types as ev
from tests.actors.conftest import BOB, Node
from tests.actors.test_scenarios import join_bob

REBOUND = "203.0.113.2:40123"


def endpoint_changes(node: Node) -> list[ev.EndpointChanged]:
    return [e for e in node.events(node.peer("bob")) if isinstance(e, ev.EndpointChanged)]


def test_a_roamed_endpoint_is_recorded_once_and_becomes_the_connections(make_node) -> None:
    node = make_node()
    join_bob(node)
    node.advance(10)
    assert endpoint_changes(node) == []  # WireGuard holds what was decided: nothing to record
    node.net.wireguard_peers["local"]["key-bob"].endpoint = REBOUND  # bob's NAT rebound; WireGuard roamed
    node.advance(5)
    changes = endpoint_changes(node)
    assert [(c.old_endpoint, c.new_endpoint, c.seen_by) for c in changes] == [(BOB, REBOUND, "wireguard")]
    assert "NAT rebinding" in changes[0].reason
    node.advance(30)
    assert len(endpoint_changes(node)) == 1  # once a change, not once a reading
    assert node.connection("p1", "bob").endpoint == REBOUND
    node.net.block(REBOUND)
    node.advance(15)
    drop = next(e for e in node.events(node.peer("bob")) if isinstance(e, ev.ConnectionStateChanged)
                and e.from_state == ev.CONNECTED)
    # The move, then answers, then the loss.
    assert re.fullmatch(r"\+*~\+{6,}-{3}", drop.recent_probes), drop.recent_probes


def test_an_announce_without_the_endpoint_in_use_is_recorded_once(make_node) -> None:
    node = make_node()
    join_bob(node)
    moved = ("203.0.113.50:51820",)
    for _ in range(2):
        node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=moved))
        node.drain()
    changes = endpoint_changes(node)
    assert [(c.old_endpoint, c.new_endpoint, c.seen_by) for c in changes] == [(BOB, moved[0], "announce")]
    # The fact does not move the connection; the punch of the new candidate that follows does.
    assert node.connection("p1", "bob").endpoint == moved[0]
    assert [e.endpoint for e in node.events(node.peer("bob"))
            if isinstance(e, ev.WireGuardPeerConfigRequested)][-1] == moved[0]


def test_a_setback_records_the_handshake_age_and_the_recent_probes(make_node) -> None:
    node = make_node()
    join_bob(node)
    node.net.wireguard_peers["local"]["key-bob"].last_handshake = time.time() - 140
    node.advance(5)
    node.net.block(BOB)
    node.advance(15)
    drop = next(e for e in node.events(node.peer("bob")) if isinstance(e, ev.ConnectionStateChanged)
                and e.from_state == ev.CONNECTED)
    assert drop.last_handshake_age_s is not None and 140 <= drop.last_handshake_age_s < 150
    assert drop.recent_probes == "++---"
    up = [e for e in node.events(node.peer("bob")) if isinstance(e, ev.ConnectionStateChanged)
          and e.to_state == ev.CONNECTED]
    assert all(e.recent_probes == "" and e.last_handshake_age_s is None for e in up)


def test_the_control_plane_lost_and_back_is_one_row_each(make_node) -> None:
    node = make_node()
    url = "ws://203.0.113.10:8667"
    for _ in range(3):  # the session retries with backoff: each retry reports nothing new
        node.tell(m.ControlReachability(url, False, error="connection refused"))
    node.tell(m.ControlReachability(url, True, outage_s=12.34))
    node.tell(m.ControlReachability(url, True, outage_s=1.0))
    node.drain()
    facts = [e for e in node.events(node.node_stream)
             if isinstance(e, ev.ControlServerUnreachable | ev.ControlServerReachable)]
    assert facts == [
        ev.ControlServerUnreachable(node_id="local", control_url=url, error="connection refused"),
        ev.ControlServerReachable(node_id="local", control_url=url, outage_s=12.3)]
