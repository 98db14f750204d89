"""NAT-PMP (RFC 6886): the two requests LANrage sends and a strict decoding of every reply.

Requests go to the gateway's UDP port 5351. Every reply is hostile until proven otherwise:
``decode_*`` checks its length, version, opcode, result code and the echoed internal port,
and raises ``PortMapWireError`` for anything else, never an exception of another kind.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from mesh.portmap.errors import PortMapRefused, PortMapWireError

PORT = 5351
VERSION = 0
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
RESPONSE = 128
MAX_REPLY = 1100  # what a reply may be before it is not even looked at (PCP's own bound)

RESULTS = {1: "unsupported version", 2: "not authorized or refused", 3: "network failure",
           4: "out of resources", 5: "unsupported opcode"}

_MAP = struct.Struct("!BBHHHI")
_EXTERNAL_REPLY = struct.Struct("!BBHI4s")
_MAP_REPLY = struct.Struct("!BBHIHHI")


@dataclass(frozen=True)
class NatPmpMapping:
    internal_port: int
    external_port: int
    lifetime_s: int
    epoch_s: int


def external_address_request() -> bytes:
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def map_request(internal_port: int, suggested_external_port: int, lifetime_s: int) -> bytes:
    """A UDP mapping request; lifetime 0 (with external port 0) deletes the mapping."""
    return _MAP.pack(VERSION, OP_MAP_UDP, 0, internal_port, suggested_external_port, lifetime_s)


def _header(data: bytes, opcode: int, size: int) -> int:
    """The result code of a reply to ``opcode``; raises on anything that is not such a reply."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_REPLY:
        raise PortMapWireError("NAT-PMP reply too long")
    if len(data) < 4:
        raise PortMapWireError(f"NAT-PMP reply of {len(data)} bytes is too short")
    version, op, result = data[0], data[1], int.from_bytes(data[2:4], "big")
    if version != VERSION:
        raise PortMapWireError(f"NAT-PMP reply with version {version}")
    if op != RESPONSE + opcode:
        raise PortMapWireError(f"NAT-PMP reply to opcode {op - RESPONSE if op >= RESPONSE else op}, "
                               f"not {opcode}")
    if result != 0:
        raise PortMapRefused(f"NAT-PMP: {RESULTS.get(result, f'result code {result}')}", code=result)
    if len(data) != size:
        raise PortMapWireError(f"NAT-PMP reply of {len(data)} bytes, not {size}")
    return result


def decode_external_address(data: bytes) -> tuple[str, int]:
    """(external IPv4 address, epoch seconds) from an external-address reply."""
    _header(data, OP_EXTERNAL_ADDRESS, _EXTERNAL_REPLY.size)
    _, _, _, epoch, packed = _EXTERNAL_REPLY.unpack(bytes(data))
    address = ipaddress.IPv4Address(packed)
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise PortMapWireError(f"NAT-PMP external address {address} is not usable")
    return str(address), epoch


def decode_map(data: bytes, internal_port: int) -> NatPmpMapping:
    """The mapping a map reply grants for ``internal_port``."""
    _header(data, OP_MAP_UDP, _MAP_REPLY.size)
    _, _, _, epoch, internal, external, lifetime = _MAP_REPLY.unpack(bytes(data))
    if internal != internal_port:
        raise PortMapWireError(f"NAT-PMP reply for internal port {internal}, not {internal_port}")
    return NatPmpMapping(internal_port=internal, external_port=external, lifetime_s=lifetime, epoch_s=epoch)
