"""A party is open only when the node holds its address on the interface: otherwise the
command is refused with the cause, and once the cause is gone the same join works, with
no restart."""

from __future__ import annotations

from typing import Any

from actors import messages as m
from api.models import StatusOut
from api.reader import status
from commands.node import print_status
from events.fold import World, apply_world
from tests.actors.conftest import BOB


def test_a_join_whose_address_cannot_be_assigned_is_refused_with_the_cause_then_works(make_node) -> None:
    node = make_node()
    node.net.interface_error = "UDP port 51820 (--listen-port) is held by PID 4242 (nc -u -l 51820)"
    join = m.JoinParty("p1", "LAN", "bob", "Bob", local_virtual_ip="10.66.0.2")
    refused = node.ask(join)
    assert refused == m.CommandRejected(
        "OpenParty", "cannot set up WireGuard: UDP port 51820 (--listen-port) is held by PID 4242 "
                     "(nc -u -l 51820)")
    left = node.ask(m.LeaveParty("p1", reason="could not be set up"))
    assert left == m.PartyClosed("p1", "could not be set up")
    node.net.interface_error = None
    assert node.ask(join) == m.PartyOpened("p1", "bob", "10.66.0.2")
    assert [line.split("(")[0] for line in node.described(node.party())][-2:] == [
        "VirtualIpAllocated", "LocalAddressAssigned"]


def _status_from_log(node: Any) -> dict[str, Any]:
    """``GET /status`` as the API computes it: the fold of the log, not the actors' memory."""
    world = World()
    for record in node.recorder.read_all():
        world = apply_world(world, record.stream_id, record.event, record.global_position)
    return status(world)


def test_status_shows_why_the_node_holds_no_working_interface(make_node, capsys) -> None:
    """After a restart the port is held by another program and WireGuard takes no change: the
    party's peers are `connecting`, and `status` (text and --json) says why, from the log."""
    node = make_node()
    assert node.ask(m.JoinParty("p1", "LAN", "bob", "Bob", local_virtual_ip="10.66.0.2")) == m.PartyOpened(
        "p1", "bob", "10.66.0.2")
    node.tell(m.PeerAnnounced("p1", "alice", "Alice", "key-alice", candidates=(BOB,)))
    node.advance(1)
    assert _status_from_log(node)["parties"][0]["interface_error"] is None
    node.crash()
    held = "UDP port 51820 (--listen-port) is held by PID 4242 (nc -u -l 51820)"
    node.net.interface_error = held
    node.net.wireguard_error = "WireGuard interface lanrage0 is gone (did wireguard-go exit?)"
    node.net.wireguard_peers["local"].clear()
    node.start()
    node.advance(3)
    party = _status_from_log(node)["parties"][0]
    assert party["interface_error"] == held
    alice = next(peer for peer in party["peers"] if peer["name"] == "Alice")
    assert alice["state"] == "connecting"
    assert alice["wireguard_error"] == node.net.wireguard_error
    StatusOut.model_validate({**_status_from_log(node), "agent": {}})  # the API's response model
    print_status({**_status_from_log(node), "agent": {}})
    printed = capsys.readouterr().out.splitlines()
    assert f"error: this node does not hold 10.66.0.2 on a working interface: {held}" in printed
    assert ("error: WireGuard did not take the change for Alice: WireGuard interface lanrage0 is gone "
            "(did wireguard-go exit?)") in printed
    # Once the port is free and WireGuard takes changes, the next start clears both.
    node.crash()
    node.net.interface_error = node.net.wireguard_error = None
    node.start()
    node.advance(3)
    party = _status_from_log(node)["parties"][0]
    assert party["interface_error"] is None
    assert [peer["wireguard_error"] for peer in party["peers"]] == [None, None]


def test_an_interface_that_vanishes_under_a_party_is_recorded_and_made_again(make_node) -> None:
    """wireguard-go exits under an open party: the next check records why the address is on no
    working interface, and the interface is made again; while it cannot be, `status` says why,
    and once the cause is gone the party heals without a restart or a new join."""
    node = make_node()
    assert node.ask(m.JoinParty("p1", "LAN", "bob", "Bob", local_virtual_ip="10.66.0.2")) == m.PartyOpened(
        "p1", "bob", "10.66.0.2")
    node.new(node.party())
    gone = "WireGuard interface sim-local is gone (did wireguard-go exit?)"
    failed = f"LocalAddressFailed(virtual_ip='10.66.0.2', error={gone!r})"
    assigned = "LocalAddressAssigned(virtual_ip='10.66.0.2', interface='sim-local')"
    node.advance(5)
    assert node.new(node.party()) == []  # a check that finds it working records nothing
    node.net.interfaces_gone.add("local")
    node.advance(5)
    assert node.new(node.party()) == [failed, assigned]
    assert _status_from_log(node)["parties"][0]["interface_error"] is None

    held = "UDP port 51820 (--listen-port) is held by PID 4242 (nc -u -l 51820)"
    node.net.interfaces_gone.add("local")
    node.net.interface_error = held
    node.advance(5)
    assert node.new(node.party()) == [failed, f"LocalAddressFailed(virtual_ip='10.66.0.2', error={held!r})"]
    assert _status_from_log(node)["parties"][0]["interface_error"] == held
    node.advance(15)  # tried again every 5 s: the same failure is not written again
    assert node.new(node.party()) == []
    node.net.interface_error = None
    node.advance(5)
    assert node.new(node.party()) == [assigned]
    assert _status_from_log(node)["parties"][0]["interface_error"] is None
