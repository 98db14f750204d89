"""What a node accepts from a control plane: its own rules, whatever the server says.

A server (an honest one, or a rogue one named by a crafted invite) describes a party: its
subnet, every member's virtual IP, key and name. The node configures WireGuard from that, so
it checks it first (``check_party``): the subnet inside the node's mesh range (never a default
route, never a public range), every virtual IP a usable address of that subnet, one address
and one key per member, bounded printable names. A party that breaks any rule is refused as a
whole, with an ``UntrustedParty`` naming the rule, before anything is configured.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from mesh import ipam
from mesh.interfaces import MeshError
from mesh.keys import validate_public_key
from mesh.text import printable_name, shown

# A LAN party is far smaller; the honest server stops at 256 (max_members_per_party).
MAX_MEMBERS = 256
MAX_DEVICES = 16  # static devices one member routes for (the protocol's MAX_DEVICES)
_IDENT = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class UntrustedParty(MeshError):
    """A party description that breaks this node's rules; the message names the rule broken."""


def check_mesh_range(text: str) -> ipaddress.IPv4Network:
    """The mesh range a node is configured with: a private IPv4 network, at most a /8."""
    try:
        network = ipam.parse_subnet(text)
    except ipam.IpamError as error:
        raise UntrustedParty(f"mesh range: {error}") from None
    if network.prefixlen < 8 or not network.is_private:
        raise UntrustedParty(f"mesh range {text} must be a private IPv4 network of /8 or smaller "
                             f"(like {ipam.DEFAULT_SUBNET})")
    return network


def check_subnet(subnet: Any, mesh_range: str) -> ipaddress.IPv4Network:
    """The party's subnet, if it lies inside ``mesh_range`` and has room for hosts."""
    mesh = check_mesh_range(mesh_range)
    if not isinstance(subnet, str) or len(subnet) > 18:
        raise UntrustedParty(f"the party's subnet {shown(subnet)[:40]!r} is not an IPv4 network")
    try:
        network = ipam.parse_subnet(subnet)
    except ipam.IpamError:
        raise UntrustedParty(f"the party's subnet {shown(subnet)!r} is not an IPv4 network") from None
    if not network.subnet_of(mesh) or network.prefixlen > 30:
        raise UntrustedParty(f"the party's subnet {subnet} is outside this node's mesh range {mesh}")
    return network


def check_address(address: Any, network: ipaddress.IPv4Network, whose: str) -> str:
    """``address`` if it is a usable host address of ``network`` (not its network or broadcast)."""
    text = shown(address)[:40]
    if not isinstance(address, str) or len(address) > 15:
        raise UntrustedParty(f"{whose}'s virtual IP {text!r} is not an IPv4 address")
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        raise UntrustedParty(f"{whose}'s virtual IP {text!r} is not an IPv4 address") from None
    if not ipam.usable_host(parsed, network):
        raise UntrustedParty(f"{whose}'s virtual IP {address} is outside the party's subnet {network}")
    return str(parsed)


def _name(value: Any, what: str, empty_ok: bool = False) -> str:
    if empty_ok and value == "":
        return value
    if not printable_name(value):
        raise UntrustedParty(f"{what} {shown(value)[:80]!r} is not a short printable name")
    return str(value)


def _ident(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise UntrustedParty(f"{what} {shown(value)[:80]!r} is not an id (letters, digits, _ . -)")
    return value


def check_member(member: Any, network: ipaddress.IPv4Network) -> None:
    """One member as a server describes it (``welcome``, ``party_joined``, ``peer_joined``)."""
    if not isinstance(member, dict):
        raise UntrustedParty("a member is not an object")
    peer_id = _ident(member.get("peer_id"), "a member's peer id")
    whose = f"member {peer_id}"
    _name(member.get("name", ""), f"{whose}'s name", empty_ok=True)
    try:
        validate_public_key(member.get("public_key"))  # type: ignore[arg-type]
    except MeshError:
        raise UntrustedParty(f"{whose}'s public key is not a WireGuard key") from None
    if member.get("virtual_ip") is not None:
        check_address(member.get("virtual_ip"), network, whose)
    devices = member.get("devices", [])
    if not isinstance(devices, list) or len(devices) > MAX_DEVICES:
        raise UntrustedParty(f"{whose}'s devices are not a list of at most {MAX_DEVICES}")
    for device in devices:
        if not isinstance(device, dict):
            raise UntrustedParty(f"{whose}'s device is not an object")
        device_id = _ident(device.get("device_id"), f"{whose}'s device id")
        _name(device.get("name"), f"device {device_id}'s name")
        check_address(device.get("virtual_ip"), network, f"device {device_id}")


def check_party(party: Any, local_peer_id: str, mesh_range: str = ipam.DEFAULT_SUBNET) -> None:
    """Raise ``UntrustedParty`` unless the party a server described obeys this node's rules."""
    if not isinstance(party, dict):
        raise UntrustedParty("the party is not an object")
    _ident(party.get("party_id"), "the party id")
    _name(party.get("name"), "the party's name")
    network = check_subnet(party.get("subnet"), mesh_range)
    members = party.get("members")
    if not isinstance(members, list) or not 0 < len(members) <= MAX_MEMBERS:
        raise UntrustedParty(f"the party's members are not a list of 1 to {MAX_MEMBERS}")
    holders: dict[str, str] = {}
    keys: dict[str, str] = {}
    for member in members:
        check_member(member, network)
        peer_id = member["peer_id"]
        addresses = [member.get("virtual_ip")] + [d["virtual_ip"] for d in member.get("devices", [])]
        for address in filter(None, addresses):
            if holders.setdefault(address, peer_id) != peer_id:
                raise UntrustedParty(f"the party gives {address} to both {holders[address]} and {peer_id}")
        if keys.setdefault(member["public_key"], peer_id) != peer_id:
            raise UntrustedParty(f"the party gives one public key to both {keys[member['public_key']]} "
                                 f"and {peer_id}")
    me = next((m for m in members if m["peer_id"] == local_peer_id), None)
    if me is None or not me.get("virtual_ip"):
        raise UntrustedParty("the control plane did not list this node as a member with a virtual IP")


def check_disjoint(party: dict[str, Any], held: Iterable[tuple[str, str, str]]) -> None:
    """Parties on one node share its mesh range, so their addresses must not meet: ``held`` is
    (address, public key, where) of every address this node's other parties use; an address of
    ``party`` held there by another key refuses the party (WireGuard routes an address to one
    key only, so one of the two would get the other's traffic)."""
    owners = {address: (key, where) for address, key, where in held}
    for member in party["members"]:
        addresses = [member.get("virtual_ip")] + [d["virtual_ip"] for d in member.get("devices", [])]
        for address in filter(None, addresses):
            key, where = owners.get(address, (member["public_key"], ""))
            if key != member["public_key"]:
                raise UntrustedParty(f"{address} of member {member['peer_id']} is already {where} on this "
                                     f"node: parties on one node must not share an address")
