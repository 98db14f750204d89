"""Property: whatever a control server sends (parties, subnets, members, keys, addresses,
static devices, departures, in any order and in several parties at once), the (key, allowed IP)
pairs WireGuard holds on the node never give one address to two keys and never leave the mesh
range; nor does any address of the node's interface. The live actors on the simulated network,
with the production rules (no filtering in the test)."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

import mesh.sim as sim
from actors import messages as m
from tests.actors.conftest import Node as Harness
from tests.actors.conftest import VirtualClock, make_config

MESH = ipaddress.ip_network("10.66.0.0/16")
PARTIES = ("p1", "p2", "p3")
PEERS = ("bob", "carol", "dave", "eve")
KEYS = ("key-a", "key-b", "key-c", "key-d", "key-e")
SUBNETS = ("10.66.0.0/16", "10.66.1.0/24", "10.0.0.0/8", "8.8.0.0/16", "0.0.0.0/0", "192.168.1.0/24",
           "10.66.0.0/30")
ADDRESSES = ("10.66.0.1", "10.66.0.2", "10.66.0.3", "10.66.1.1", "10.66.1.255", "10.66.0.0", "8.8.8.8",
             "192.168.1.2", "0.0.0.0")
address = st.sampled_from(ADDRESSES)
device = st.builds(lambda i, key, ip: m.StaticDeviceInfo(f"d{i}", f"dev{i}", key, ip),
                   st.integers(1, 3), st.sampled_from(KEYS), address)
announce = st.tuples(st.just("announce"), st.sampled_from(PARTIES), st.sampled_from(PEERS),
                     st.sampled_from(KEYS), st.none() | address,
                     st.none() | st.lists(device, max_size=2).map(tuple))
steps = st.one_of(
    st.tuples(st.just("join"), st.sampled_from(PARTIES), st.sampled_from(SUBNETS), st.none() | address),
    announce, announce, announce,
    st.tuples(st.just("depart"), st.sampled_from(PARTIES), st.sampled_from(PEERS)),
    st.tuples(st.just("advance"), st.integers(1, 40)),
)


def apply_step(node: Harness, step: tuple[Any, ...]) -> None:
    match step:
        case ("join", party, subnet, local_ip):
            node.ask(m.JoinParty(party, party.upper(), "me", "Me", local_ip, subnet=subnet))
        case ("announce", party, peer, key, ip, devices):
            node.tell(m.PeerAnnounced(party, peer, peer.title(), key, virtual_ip=ip,
                                      candidates=(f"203.0.113.{10 + PEERS.index(peer)}:51820",),
                                      devices=devices))
        case ("depart", party, peer):
            node.tell(m.PeerDeparted(party, peer))
        case ("advance", seconds):
            node.advance(seconds, step=2.0)


def check(node: Harness) -> int:
    """The rules hold; how many addresses WireGuard routes."""
    owners: dict[ipaddress.IPv4Network, str] = {}
    for key, peer in node.net.wireguard_peers.get("local", {}).items():
        for text in peer.allowed_ips:
            network = ipaddress.ip_network(text)
            assert network.subnet_of(MESH), (key, text)
            assert network.prefixlen == 32, (key, text)
            assert owners.setdefault(network, key) == key, f"{text} for {owners[network]} and {key}"
    for text in node.net.addresses.get("local", []):
        assert ipaddress.ip_address(text) in MESH, text
    return len(owners)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(steps, min_size=1, max_size=14))
def test_one_key_per_address_and_nothing_outside_the_mesh_range(monkeypatch, script) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    sim.reset(name)
    node = Harness(name, VirtualClock(monkeypatch), make_config(first_probe_s=0.5))
    node.start()
    routed = 0
    try:
        # Two honest parties first (as two honest servers give them: one subnet, the same
        # addresses), then whatever the servers send.
        for step in [("join", "p1", "10.66.0.0/16", "10.66.0.1"), ("join", "p2", "10.66.0.0/16", "10.66.0.2"),
                     *script]:
            apply_step(node, step)
            node.advance(2, step=1.0)
            routed = max(routed, check(node))
    finally:
        node.stop()
    note_event(f"at most {min(routed, 3)}{'+' if routed >= 3 else ''} addresses routed")
