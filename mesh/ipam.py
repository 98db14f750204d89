"""Virtual IP allocation for a party: pure decisions over the party's own events.

The one source of truth is the party stream: ``events.fold.PartyState.allocations``
(peer id -> virtual IP) is the fold of its ``VirtualIpAllocated``/``VirtualIpReleased``
(and ``PeerLeft``) events. ``allocate`` and ``release`` only *decide*: they return the
event to persist, and the caller persists it, then applies it. So a replay of the
stream reproduces the exact map, and two decisions from the same state agree.

Rules: an address is never handed out twice; the subnet's network and broadcast
addresses and the caller's ``reserved`` addresses (e.g. this host's own interface
addresses, ``host_addresses()``) are skipped; a peer that already has an address keeps
it; a returning peer may ask for its ``preferred`` old address; a full subnet raises
``AddressExhaustedError``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from events import types as ev
from events.fold import PartyState
from mesh.interfaces import MeshError

DEFAULT_SUBNET = "10.66.0.0/16"


class IpamError(MeshError):
    """A virtual IP decision that cannot be made."""


class AddressExhaustedError(IpamError):
    """Every usable address of the subnet is taken."""


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(subnet, strict=True)
    except ValueError:
        raise IpamError(f"invalid subnet {subnet!r}: expected an IPv4 network like {DEFAULT_SUBNET}"
                        ) from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise IpamError(f"invalid subnet {subnet!r}: only IPv4 subnets are supported")
    return network


def _usable(network: ipaddress.IPv4Network, address: ipaddress.IPv4Address) -> bool:
    if address not in network:
        return False
    if network.prefixlen >= 31:
        return False  # no room for a host once network and broadcast are skipped
    return address not in (network.network_address, network.broadcast_address)


def usable_count(subnet: str) -> int:
    network = parse_subnet(subnet)
    return max(0, network.num_addresses - 2) if network.prefixlen < 31 else 0


def taken(party: PartyState, reserved: Iterable[str] = ()) -> set[ipaddress.IPv4Address]:
    """Every address that must not be handed out."""
    used = set()
    for text in [*party.address_owners.values(), *reserved]:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv4Address):
            used.add(address)
    return used


def allocate(party: PartyState, peer_id: str, *, subnet: str | None = None, reserved: Iterable[str] = (),
             preferred: str | None = None) -> ev.VirtualIpAllocated | None:
    """The ``VirtualIpAllocated`` to persist for ``peer_id``, or None if it already has one.

    The lowest free address is chosen (``preferred`` first, if free), so the same
    state always gives the same decision.
    """
    if not peer_id:
        raise IpamError("a peer id is required")
    network = parse_subnet(subnet or party.subnet or DEFAULT_SUBNET)
    current = party.allocations.get(peer_id)
    if current is not None:
        try:
            if _usable(network, ipaddress.IPv4Address(current)):
                return None
        except ValueError:
            pass
    used = taken(party, reserved)
    choice = None
    if preferred is not None:
        try:
            wanted = ipaddress.IPv4Address(preferred)
        except ValueError:
            raise IpamError(f"invalid preferred address {preferred!r}") from None
        if _usable(network, wanted) and wanted not in used:
            choice = wanted
    if choice is None:
        choice = _lowest_free(network, used)
    return ev.VirtualIpAllocated(party_id=party.party_id, peer_id=peer_id, virtual_ip=str(choice))


def _lowest_free(network: ipaddress.IPv4Network, used: set[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    first = int(network.network_address) + 1
    last = int(network.broadcast_address) - 1
    used_ints = {int(address) for address in used}
    for candidate in range(first, last + 1):
        if candidate not in used_ints:
            return ipaddress.IPv4Address(candidate)
    raise AddressExhaustedError(f"no free virtual IP left in {network} "
                                f"({max(0, last - first + 1)} usable addresses, all taken)")


def release(party: PartyState, peer_id: str) -> ev.VirtualIpReleased | None:
    """The ``VirtualIpReleased`` to persist when ``peer_id`` leaves, or None if it holds none."""
    current = party.allocations.get(peer_id)
    if current is None:
        return None
    return ev.VirtualIpReleased(party_id=party.party_id, peer_id=peer_id, virtual_ip=current)


def duplicates(party: PartyState) -> dict[str, list[str]]:
    """Addresses held by more than one peer (should never happen; for audits)."""
    holders: dict[str, list[str]] = {}
    for peer_id, address in party.allocations.items():
        holders.setdefault(address, []).append(peer_id)
    return {address: sorted(peers) for address, peers in holders.items() if len(peers) > 1}


def host_addresses() -> list[str]:
    """IPv4 addresses on this host's interfaces (in its namespace), for ``reserved``."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return sorted({str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)
                       if a.get_attr("IFA_ADDRESS")})


def usable_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                network: ipaddress.IPv4Network) -> bool:
    """A host address of ``network``: inside it, and neither its network nor its broadcast address."""
    return address in network and address not in (network.network_address, network.broadcast_address)


def choose(party: PartyState, peer_id: str, assigned: str | None) -> str:
    """The address ``peer_id`` gets: the control server's ``assigned`` one (checked against
    the subnet and the other members), or the lowest free one of ``allocate``."""
    network = parse_subnet(party.subnet)
    if assigned is None:
        decided = allocate(party, peer_id)
        return decided.virtual_ip if decided else party.allocations[peer_id]
    try:
        address = ipaddress.ip_address(assigned)
    except ValueError:
        raise IpamError(f"virtual IP {assigned!r} is not an address") from None
    if not usable_host(address, network):
        raise IpamError(f"virtual IP {assigned} is outside {party.subnet}")
    owners = {ip: pid for pid, ip in party.address_owners.items() if pid != peer_id}
    if assigned in owners:
        raise IpamError(f"virtual IP {assigned} already belongs to {owners[assigned]}")
    return assigned
