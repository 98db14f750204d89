"""A device without LANrage: the party's decisions about static devices, on simulated adapters."""

from __future__ import annotations

import time

from actors import messages as m
from events import types as ev
from events.fold import PartyState, World, apply_party, apply_world, fold_stream
from mesh.control.identity import peer_id_for
from mesh.keys import PrivateKey
from tests.actors.conftest import BOB, Node

ENDPOINT = "203.0.113.1:51820"


def open_party(node: Node) -> None:
    assert isinstance(node.ask(m.CreateParty("p1", "LAN", "alice", "Alice")), m.PartyOpened)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", virtual_ip="10.66.0.2", candidates=(BOB,)))
    node.advance(5)


def export(node: Node, name: str, key: PrivateKey) -> m.DeviceExported | m.CommandRejected:
    reply = node.ask(m.ExportDevice("p1", name, key.public_key, ENDPOINT))
    assert isinstance(reply, m.DeviceExported | m.CommandRejected), reply
    return reply


def party_state(node: Node) -> PartyState:
    return fold_stream(apply_party, PartyState(), node.events(node.party()))


def all_payloads(node: Node) -> str:
    return "\n".join(str(record.event.to_payload()) for record in node.recorder.read_all())


def test_export_makes_the_device_a_forwarded_peer_of_this_node(make_node) -> None:
    node = make_node()
    open_party(node)
    key = PrivateKey.generate()
    reply = export(node, "switch", key)
    device_id = peer_id_for(key.public_key)
    assert reply == m.DeviceExported(party_id="p1", device_id=device_id, name="switch",
                                     virtual_ip="10.66.0.3", subnet="10.66.0.0/16",
                                     router_public_key="sim-key-local", router_name="Alice",
                                     endpoint=ENDPOINT)
    assert node.new(node.party())[-2:] == [
        f"StaticDeviceExported(device_id={device_id!r}, name='switch', public_key={key.public_key!r}, "
        f"virtual_ip='10.66.0.3', via_peer_id='alice', endpoint={ENDPOINT!r})",
        f"StaticDeviceApplied(device_id={device_id!r}, "
        "detail='a WireGuard peer of this node, with IPv4 forwarding on')"]
    peer = node.net.wireguard_peers["local"][key.public_key]
    assert (peer.endpoint, peer.allowed_ips, peer.keepalive_s) == (None, ("10.66.0.3/32",), 0)
    assert "local" in node.net.forwarding
    assert key.secret_base64() not in all_payloads(node)
    # The device's connection stream: waiting for it, then up once it handshakes.
    assert node.new(node.peer(device_id)) == [
        "ConnectionStateChanged(from_state=None, to_state='connecting', reason='exported as a static "
        "WireGuard peer; waiting for its first handshake', path=None, endpoint=None, relay=None, "
        "latency_ms=None)"]
    node.advance(10)
    assert node.new(node.peer(device_id)) == []
    node.net.handshakes[key.public_key] = time.time()
    node.advance(5)
    assert [e.to_state for e in node.events(node.peer(device_id))] == ["connecting", "connected"]
    node.net.handshakes[key.public_key] = time.time() - 200
    node.advance(5)
    last = node.events(node.peer(device_id))[-1]
    assert isinstance(last, ev.ConnectionStateChanged) and last.to_state == ev.FAILED
    assert last.reason.startswith("no handshake from the device for 180 s")


def test_names_keys_and_parties_that_are_refused(make_node) -> None:
    node = make_node()
    open_party(node)
    key = PrivateKey.generate()
    assert isinstance(export(node, "switch", key), m.DeviceExported)
    taken = "the name 'Switch' is taken in party p1"
    assert export(node, "Switch", PrivateKey.generate()) == m.CommandRejected("ExportDevice", taken)
    assert export(node, "bob", PrivateKey.generate()) == m.CommandRejected(
        "ExportDevice", "the name 'bob' is taken in party p1")
    assert export(node, "phone", key) == m.CommandRejected("ExportDevice", "this public key is already in "
                                                                          "the party")
    bad = node.ask(m.ExportDevice("p1", "phone", "not-a-key", ENDPOINT))
    assert isinstance(bad, m.CommandRejected) and bad.reason.startswith("invalid device public key")
    assert node.ask(m.ExportDevice("p2", "phone", key.public_key, ENDPOINT)) == m.CommandRejected(
        "ExportDevice", "no open party 'p2'")
    assert isinstance(node.ask(m.ExportDevice("p1", " x\n", key.public_key, ENDPOINT)), m.CommandRejected)
    assert [name for name, _ in [(d.name, d) for _, d in party_state(node).devices]] == ["switch"]


def test_a_device_that_cannot_be_served_is_taken_back(make_node) -> None:
    node = make_node()
    open_party(node)
    node.net.interface_error = "forwarding is off limits"
    reply = export(node, "switch", PrivateKey.generate())
    assert reply == m.CommandRejected("ExportDevice", "cannot serve the device: forwarding is off limits")
    assert party_state(node).devices == ()
    node.net.interface_error = None
    assert isinstance(export(node, "switch", PrivateKey.generate()), m.DeviceExported)


def test_a_device_of_another_member_is_routed_through_it(make_node) -> None:
    node = make_node()
    open_party(node)
    key = PrivateKey.generate()
    device_id = peer_id_for(key.public_key)
    switch = m.StaticDeviceInfo(device_id, "switch", key.public_key, "10.66.0.9")
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", virtual_ip="10.66.0.2", candidates=(BOB,),
                              devices=(switch,)))
    node.advance(1)
    assert node.new(node.party())[-2:] == [
        f"StaticDeviceRouted(device_id={device_id!r}, name='switch', public_key={key.public_key!r}, "
        "virtual_ip='10.66.0.9', via_peer_id='bob')",
        f"StaticDeviceApplied(device_id={device_id!r}, detail='10.66.0.9/32 goes through member Bob')"]
    bob = node.net.wireguard_peers["local"]["key-bob"]
    assert bob.allowed_ips == ("10.66.0.2/32", "10.66.0.9/32")
    assert node.status().parties[0].devices == tuple(d for _, d in party_state(node).devices)
    assert [e.to_state for e in node.events(node.peer(device_id))] == ["connecting", "connected"]
    # Said again: nothing new. A device on someone's address, or under a forged id: refused.
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", virtual_ip="10.66.0.2", candidates=(BOB,),
                              devices=(switch,)))
    node.advance(1)
    assert node.new(node.party()) == []
    other = PrivateKey.generate()
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", virtual_ip="10.66.0.2", candidates=(BOB,),
                              devices=(switch, m.StaticDeviceInfo(peer_id_for(other.public_key), "tv",
                                                                  other.public_key, "10.66.0.1"),
                                       m.StaticDeviceInfo("forged", "pc", other.public_key, "10.66.0.20"))))
    node.advance(1)
    reasons = [e.reason for e in node.events(node.party()) if isinstance(e, ev.MessageRejected)]
    assert reasons[-2:] == [
        f"static device {peer_id_for(other.public_key)!r} of Bob: virtual IP 10.66.0.1 already belongs "
        "to alice", "static device 'forged' of Bob: its id is not its public key's"]
    assert [d for d, _ in party_state(node).devices] == [device_id]
    # Bob stops routing it: the route goes, the device's stream says closed.
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", virtual_ip="10.66.0.2", candidates=(BOB,),
                              devices=()))
    node.advance(1)
    assert party_state(node).devices == ()
    assert node.net.wireguard_peers["local"]["key-bob"].allowed_ips == ("10.66.0.2/32",)
    assert node.events(node.peer(device_id))[-1].to_state == ev.CLOSED
    # A control plane that says nothing of devices (file discovery) leaves them as they are.
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", virtual_ip="10.66.0.2", devices=(switch,)))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", virtual_ip="10.66.0.2"))
    node.advance(1)
    assert [d for d, _ in party_state(node).devices] == [device_id]
    # Its router leaves: so does the device.
    node.tell(m.PeerDeparted("p1", "bob", "left the party"))
    node.advance(1)
    assert party_state(node).devices == ()
    assert node.net.routes["local"]["key-bob"] == ()  # should Bob come back, his peer carries no device
    assert node.events(node.peer(device_id))[-1].to_state == ev.CLOSED


def test_leave_removes_the_devices_and_replay_equals_live(make_node) -> None:
    node = make_node(name="static-restart")
    open_party(node)
    key = PrivateKey.generate()
    assert isinstance(export(node, "switch", key), m.DeviceExported)
    # A restart: the interface comes back empty, the party re-serves the device from its log,
    # and the same outcome is not written twice.
    node.crash()
    node.net.wireguard_peers["local"].clear()
    node.start()
    node.advance(1)
    assert key.public_key in node.net.wireguard_peers["local"]
    types = [e.event_type for e in node.events(node.party())]
    assert types.count("StaticDeviceApplied") == 1
    world = World()
    for record in node.recorder.read_all():
        world = apply_world(world, record.stream_id, record.event, record.global_position)
    assert world.parties[node.party()] == party_state(node)
    live = node.status().parties[0].devices
    assert live == tuple(device for _, device in world.parties[node.party()].devices)
    assert [(d.name, d.applied, d.via_peer_id) for d in live] == [("switch", True, "alice")]
    assert node.ask(m.LeaveParty("p1")) == m.PartyClosed("p1", "left by the user")
    assert key.public_key not in node.net.wireguard_peers["local"]
    device_id = peer_id_for(key.public_key)
    assert node.events(node.peer(device_id))[-1].to_state == ev.CLOSED
    assert party_state(node).devices == ()
    removed = [e for e in node.events(node.party()) if isinstance(e, ev.StaticDeviceRemoved)]
    assert [(e.device_id, e.reason) for e in removed] == [(device_id, "the local node left the party")]
