"""Relay first (the DERP way): a new connection rides the relay at once, punches behind it
and upgrades to direct when the punch works; it stays on the relay when it does not.
Exact stored sequences."""

from __future__ import annotations

import pytest

from actors import messages as m
from tests.actors.conftest import BOB, RELAY_A, Node
from tests.actors.test_nat import restart_with

CONNECTING = ("ConnectionStateChanged(from_state=None, to_state='connecting', "
              "reason='peer joined the party', path=None, endpoint=None, relay=None, latency_ms=None)")
STARTED = "ConnectionAttemptStarted(attempt=1, path='direct')"
PUNCH = ("HolePunchAttempted(local_candidates=('203.0.113.1:51820',), "
         "remote_candidates=('203.0.113.2:51820',))")


def remote(nat_type: str) -> str:
    return f"RemotePeerUpdated(candidates=('{BOB}',), nat_type='{nat_type}')"


def configured(endpoint: str) -> list[str]:
    fields = f"public_key='key-bob', endpoint='{endpoint}', allowed_ips=('10.66.0.2/32',), keepalive_s=25"
    return [f"WireGuardPeerConfigRequested({fields})",
            f"WireGuardPeerConfigured({fields}, decided_here=False)"]


def on_relay(nat_type: str) -> list[str]:
    return [
        remote(nat_type), CONNECTING, STARTED,
        f"RelayAllocationRequested(relay='{RELAY_A}', purpose='relay first')",
        f"RelaySessionOpened(relay='{RELAY_A}', session_id='p1/bob', endpoint='{RELAY_A}')",
        f"PathChosen(path='relay', reason='relay first while the hole punch runs', endpoint='{RELAY_A}', "
        f"relay='{RELAY_A}')",
        configured(RELAY_A)[0], PUNCH, configured(RELAY_A)[1]]


RELEASED = f"RelaySessionReleased(relay='{RELAY_A}', session_id='p1/bob', error='')"


def behind_port_restricted(make_node) -> Node:
    node = make_node(relays=(RELAY_A,))
    restart_with(node, "mesh.sim:adapters", nat_type="port_restricted")
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    return node


def test_relay_first_then_the_punch_upgrades_to_direct(make_node) -> None:
    node = behind_port_restricted(make_node)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", nat_type="port_restricted", candidates=(BOB,)))
    assert node.new(node.peer("bob")) == [
        *on_relay("port_restricted"),
        f"HolePunchSucceeded(endpoint='{BOB}', rtt_ms=20.0, elapsed_ms=40.0)",
        f"PathSwitched(from_path='relay', to_path='direct', reason='hole punch succeeded', endpoint='{BOB}', "
        f"from_relay='{RELAY_A}', to_relay=None, from_latency_ms=None, to_latency_ms=20.0)",
        *configured(BOB), RELEASED]
    # WireGuard followed the stored events, in order: relay first, then the punched endpoint.
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", RELAY_A),
                                                   ("configure", "key-bob", BOB)]
    assert node.net.relay_log == [("allocate", RELAY_A, "p1/bob"), ("release", RELAY_A, "p1/bob")]
    node.advance(65)
    assert node.new(node.peer("bob")) == [
        "ConnectionStateChanged(from_state='connecting', to_state='connected', "
        f"reason='first probe answered in 20.0 ms', path='direct', endpoint='{BOB}', relay=None, "
        "latency_ms=20.0)"]  # direct: no periodic direct retry
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.endpoint, state.relay) == ("connected", "direct", BOB, None)


def test_relay_first_stays_on_the_relay_when_the_punch_fails(make_node) -> None:
    node = behind_port_restricted(make_node)
    node.net.block(BOB)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", nat_type="symmetric", candidates=(BOB,)))
    assert node.new(node.peer("bob")) == [
        *on_relay("symmetric"), "HolePunchFailed(reason='no candidate answered', elapsed_ms=5000.0)"]
    node.advance(5)
    assert node.new(node.peer("bob")) == [
        "ConnectionStateChanged(from_state='connecting', to_state='connected', "
        f"reason='first probe answered in 20.0 ms', path='relay', endpoint='{RELAY_A}', relay='{RELAY_A}', "
        "latency_ms=20.0)"]
    node.net.unblock(BOB)
    node.advance(30)  # the periodic direct retry upgrades it
    assert node.new(node.peer("bob")) == [
        PUNCH,
        "DirectPathRetried(succeeded=True, reason='hole punch succeeded')",
        "PathSwitched(from_path='relay', to_path='direct', reason='direct path works again', "
        f"endpoint='{BOB}', from_relay='{RELAY_A}', to_relay=None, from_latency_ms=20.0, to_latency_ms=20.0)",
        *configured(BOB), RELEASED]
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", RELAY_A),
                                                   ("configure", "key-bob", BOB)]
    assert node.net.relay_log == [("allocate", RELAY_A, "p1/bob"), ("release", RELAY_A, "p1/bob")]


@pytest.mark.parametrize("peer_nat", ["open", "full_cone"])
def test_no_relay_first_when_direct_is_near_certain(make_node, peer_nat: str) -> None:
    node = behind_port_restricted(make_node)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", nat_type=peer_nat, candidates=(BOB,)))
    assert node.new(node.peer("bob")) == [
        remote(peer_nat), CONNECTING, STARTED, PUNCH,
        f"HolePunchSucceeded(endpoint='{BOB}', rtt_ms=20.0, elapsed_ms=40.0)",
        f"PathChosen(path='direct', reason='hole punch succeeded', endpoint='{BOB}', relay=None)",
        *configured(BOB)]
    assert node.net.relay_log == []
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB)]


def test_relay_first_can_be_turned_off(make_node) -> None:
    node = make_node(relays=(RELAY_A,), relay_first=False)
    restart_with(node, "mesh.sim:adapters", nat_type="port_restricted")
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", nat_type="port_restricted", candidates=(BOB,)))
    assert [e.split("(")[0] for e in node.new(node.peer("bob"))] == [
        "RemotePeerUpdated", "ConnectionStateChanged", "ConnectionAttemptStarted", "HolePunchAttempted",
        "HolePunchSucceeded", "PathChosen", "WireGuardPeerConfigRequested", "WireGuardPeerConfigured"]
    assert node.net.relay_log == []
