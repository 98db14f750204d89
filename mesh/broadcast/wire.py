"""The wrapper a captured broadcast travels in, unicast through the tunnel to each peer.

    magic "LRbc" | version 1 | hops 1 | flags 0 (2 bytes) | origin virtual IP (4)
    | original source port (2) | original destination IP (4) | original destination port (2)
    | message id (8) | payload

Hops is always 1: a receiver re-emits locally and never forwards, so a datagram crosses
exactly one tunnel hop. Anything else is malformed and dropped by the caller.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

MAGIC = b"LRbc"
VERSION = 1
HOPS = 1
HEADER = struct.Struct("!4sBBH4sH4sHQ")
HEADER_SIZE = HEADER.size  # 28


class WireError(ValueError):
    """A wrapped datagram that is not one of ours, or is damaged."""


@dataclass(frozen=True)
class Wrapped:
    origin: str  # the sender's virtual IP
    src_port: int
    dst: str  # the original destination: 255.255.255.255, a subnet broadcast or a group
    dst_port: int
    msg_id: int
    payload: bytes

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, HOPS, 0, ipaddress.IPv4Address(self.origin).packed, self.src_port,
                           ipaddress.IPv4Address(self.dst).packed, self.dst_port, self.msg_id) + self.payload


def decode(data: bytes, max_payload: int) -> Wrapped:
    if len(data) < HEADER_SIZE:
        raise WireError("short")
    magic, version, hops, flags, origin, src_port, dst, dst_port, msg_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("magic")
    if version != VERSION:
        raise WireError("version")
    if hops != HOPS or flags != 0:
        raise WireError("hops")
    if src_port == 0 or dst_port == 0:
        raise WireError("port")
    payload = data[HEADER_SIZE:]
    if len(payload) > max_payload:
        raise WireError("too large")
    return Wrapped(str(ipaddress.IPv4Address(origin)), src_port, str(ipaddress.IPv4Address(dst)), dst_port,
                   msg_id, payload)
