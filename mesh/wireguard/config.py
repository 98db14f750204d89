"""Validated, comparable descriptions of an interface and its peers."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mesh.endpoints import format_endpoint, parse_endpoint
from mesh.keys import validate_public_key
from mesh.wireguard.errors import InvalidConfigError

DEFAULT_INTERFACE = "lanrage0"
DEFAULT_MTU = 1420
DEFAULT_KEEPALIVE_S = 25
_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,14}$")


def validate_interface_name(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise InvalidConfigError(f"invalid interface name {name!r}: 1-15 characters of "
                                 "A-Z a-z 0-9 _ . = + -, not starting with - or .")
    return name


def normalise_allowed_ips(allowed_ips: Sequence[str]) -> tuple[str, ...]:
    if isinstance(allowed_ips, str):
        allowed_ips = [allowed_ips]
    result = set()
    for text in allowed_ips:
        try:
            result.add(str(ipaddress.ip_network(text, strict=False)))
        except (ValueError, TypeError):
            raise InvalidConfigError(f"invalid allowed IP {text!r}: expected an address or a CIDR") from None
    return tuple(sorted(result))


def check_one_key_per_address(public_key: str, allowed_ips: Sequence[str],
                              others: Mapping[str, Sequence[str]]) -> None:
    """Raise ``InvalidConfigError`` if an address of ``allowed_ips`` is routed to another key of
    ``others`` (key -> its allowed IPs): WireGuard would silently move it to whichever peer was
    configured last, and one peer would get another's traffic."""
    wanted = [ipaddress.ip_network(text, strict=False) for text in normalise_allowed_ips(allowed_ips)]
    for key, held in others.items():
        if key == public_key:
            continue
        for text in held:
            network = ipaddress.ip_network(text, strict=False)
            clash = next((w for w in wanted if w.version == network.version and w.overlaps(network)), None)
            if clash is not None:
                raise InvalidConfigError(f"allowed IP {clash} is already routed to another peer ({key}): "
                                         f"one address is never given to two keys")


@dataclass(frozen=True)
class PeerConfig:
    """One peer as we want it. ``endpoint=None`` means "leave whatever WireGuard learned"."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] = ()
    keepalive_s: int = DEFAULT_KEEPALIVE_S

    @classmethod
    def make(cls, public_key: str, endpoint: str | None, allowed_ips: Sequence[str],
             keepalive_s: int = DEFAULT_KEEPALIVE_S) -> PeerConfig:
        """Validate and normalise (``InvalidKeyError``, ``InvalidEndpointError``, ``InvalidConfigError``)."""
        key = validate_public_key(public_key)
        normal_endpoint = None
        if endpoint is not None:
            normal_endpoint = format_endpoint(*parse_endpoint(endpoint))
        if not isinstance(keepalive_s, int) or not 0 <= keepalive_s <= 65535:
            raise InvalidConfigError(f"invalid keepalive {keepalive_s!r}: 0-65535 seconds")
        return cls(key, normal_endpoint, normalise_allowed_ips(allowed_ips), keepalive_s)


@dataclass(frozen=True)
class ObservedPeer:
    """One peer as the device reports it."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive_s: int
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int

    def matches(self, want: PeerConfig) -> bool:
        return (self.allowed_ips == want.allowed_ips and self.keepalive_s == want.keepalive_s
                and (want.endpoint is None or self.endpoint == want.endpoint))


@dataclass(frozen=True)
class ObservedDevice:
    public_key: str | None
    listen_port: int
    peers: dict[str, ObservedPeer] = field(default_factory=dict)


def validate_address(address: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        interface = ipaddress.ip_interface(address)
    except ValueError:
        raise InvalidConfigError(f"invalid interface address {address!r}: expected e.g. 10.66.0.2/16"
                                 ) from None
    if "/" not in address:
        raise InvalidConfigError(f"invalid interface address {address!r}: give the prefix, e.g. 10.66.0.2/16")
    return interface
