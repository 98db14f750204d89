"""A party is open only when the node holds its address on the interface: otherwise the
command is refused with the cause, and once the cause is gone the same join works, with
no restart."""

from __future__ import annotations

from actors import messages as m


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
