"""A stock ``wg-quick`` configuration for a device that cannot run LANrage.

A console, a phone or an old PC joins a party as a static WireGuard peer of one member
(the *router*): the device's only peer is that member, whose allowed IPs cover the
party's virtual subnet, and the router forwards between the device and the other
members (who route the device's /32 through the router). This module only renders the
file; which member routes, and the device's address and key, are the party's decisions.

    text = render_quick_config(QuickDevice(private_key, "10.66.0.9/32", name="switch"),
                               QuickRouter(public_key, "198.51.100.1:51820", name="alice",
                                           allowed_ips=("10.66.0.0/16",)))
    # wg-quick up ./lanrage.conf   (the file holds a private key: mode 0600)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mesh.keys import PrivateKey
from mesh.wireguard.config import DEFAULT_KEEPALIVE_S, DEFAULT_MTU, PeerConfig, validate_address
from mesh.wireguard.errors import InvalidConfigError

NAME_LIMIT = 64  # names only go into comments; a longer one is cut
QUICK_MTU = DEFAULT_MTU  # the members' MTU: a larger one would fragment inside their tunnels


@dataclass(frozen=True)
class QuickDevice:
    private_key: PrivateKey
    address: str  # the device's virtual IP with its prefix, e.g. 10.66.0.9/32
    name: str = ""
    listen_port: int | None = None  # None: wg-quick picks one (the device dials out)
    mtu: int = QUICK_MTU


@dataclass(frozen=True)
class QuickRouter:
    public_key: str
    endpoint: str  # where the device reaches the router member: its public HOST:PORT
    allowed_ips: tuple[str, ...]  # what the device sends through it: the party's subnet
    name: str = ""
    keepalive_s: int = DEFAULT_KEEPALIVE_S  # the device is usually behind a NAT too


def _comment(text: str) -> str:
    """A user-chosen name, made safe for a comment line (no line breaks, no control characters)."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    cleaned = " ".join(printable.split())
    return cleaned if len(cleaned) <= NAME_LIMIT else cleaned[: NAME_LIMIT - 1] + "…"


def render_quick_config(device: QuickDevice, router: QuickRouter, party: str = "") -> str:
    """The wg-quick file: one [Interface] for the device, one [Peer] for its router member.

    Raises ``InvalidConfigError`` (or ``InvalidKeyError`` / ``InvalidEndpointError``) for
    a bad address, key, endpoint, allowed IP, port or MTU.
    """
    if not isinstance(device.private_key, PrivateKey):
        raise InvalidConfigError("the device's private key must be a mesh.keys.PrivateKey")
    address = validate_address(device.address)
    if address.version != 4:
        raise InvalidConfigError(f"the device's address {device.address} must be IPv4")
    if device.listen_port is not None and not 1 <= device.listen_port <= 65535:
        raise InvalidConfigError(f"invalid listen port {device.listen_port!r}: 1-65535")
    if not isinstance(device.mtu, int) or not 1280 <= device.mtu <= 9000:
        raise InvalidConfigError(f"invalid MTU {device.mtu!r}: 1280-9000")
    peer = PeerConfig.make(router.public_key, router.endpoint, router.allowed_ips, router.keepalive_s)
    if peer.endpoint is None or not peer.allowed_ips:
        raise InvalidConfigError("the router member needs an endpoint and allowed IPs")
    if peer.public_key == device.private_key.public_key:
        raise InvalidConfigError("the router member cannot have the device's own public key")
    if not any(address.ip in ipaddress.ip_network(network) for network in peer.allowed_ips):
        raise InvalidConfigError(f"the router's allowed IPs {', '.join(peer.allowed_ips)} do not cover "
                                 f"the party's subnet around {address.ip}")
    lines = [f"# LANrage party {_comment(party) or '-'}: device {_comment(device.name) or '-'} "
             f"({address.ip}), through member {_comment(router.name) or '-'}.",
             "# Bring it up with `wg-quick up ./THIS-FILE.conf`. It holds a private key: keep it secret.",
             "[Interface]",
             f"PrivateKey = {device.private_key.secret_base64()}",
             f"Address = {address}",
             f"MTU = {device.mtu}"]
    if device.listen_port is not None:
        lines.append(f"ListenPort = {device.listen_port}")
    lines += ["",
              "[Peer]",
              f"# {_comment(router.name) or 'router member'}",
              f"PublicKey = {peer.public_key}",
              f"Endpoint = {peer.endpoint}",
              f"AllowedIPs = {', '.join(peer.allowed_ips)}"]
    if peer.keepalive_s:
        lines.append(f"PersistentKeepalive = {peer.keepalive_s}")
    return "\n".join(lines) + "\n"
