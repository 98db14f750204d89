"""PCP (RFC 6887): the MAP request LANrage sends and a strict decoding of every reply.

Only what a node needs: MAP of one UDP port (lifetime 0 deletes it), and ANNOUNCE to
learn whether the gateway speaks PCP at all. A reply is accepted only if it is a PCP
version 2 response to the same opcode, carries our nonce, protocol and internal port,
and an IPv4 external address; options are walked within their bounds and skipped. A
NAT-PMP-only gateway answers a PCP request with a version 0 "unsupported version": that
is ``PortMapRefused`` with ``code=UNSUPP_VERSION``, so the caller can fall back at once.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from mesh.portmap.errors import PortMapRefused, PortMapWireError

PORT = 5351
VERSION = 2
OP_ANNOUNCE = 0
OP_MAP = 1
RESPONSE_BIT = 0x80
UDP = 17
HEADER_SIZE = 24
MAP_SIZE = 36
MAX_PACKET = 1100  # RFC 6887 section 7: no PCP message is longer

SUCCESS = 0
UNSUPP_VERSION = 1
RESULTS = {1: "unsupported version", 2: "not authorized", 3: "malformed request", 4: "unsupported opcode",
           5: "unsupported option", 6: "malformed option", 7: "network failure", 8: "no resources",
           9: "unsupported protocol", 10: "user exceeded quota", 11: "cannot provide external address",
           12: "address mismatch", 13: "excessive remote peers"}

_REQUEST_HEADER = struct.Struct("!BBHI16s")
_RESPONSE_HEADER = struct.Struct("!BBBBII12s")
_MAP_BODY = struct.Struct("!12sB3sHH16s")
_ANY_V4 = ipaddress.IPv6Address("::ffff:0.0.0.0").packed


@dataclass(frozen=True)
class PcpMapping:
    internal_port: int
    external_ip: str
    external_port: int
    lifetime_s: int
    epoch_s: int


def _client_address(client_ip: str) -> bytes:
    address = ipaddress.ip_address(client_ip)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}").packed
    return address.packed


def announce_request(client_ip: str) -> bytes:
    return _REQUEST_HEADER.pack(VERSION, OP_ANNOUNCE, 0, 0, _client_address(client_ip))


def map_request(client_ip: str, nonce: bytes, internal_port: int, suggested_external_port: int,
                lifetime_s: int) -> bytes:
    """A MAP request for UDP ``internal_port``; lifetime 0 deletes the mapping of that nonce."""
    if len(nonce) != 12:
        raise ValueError("a PCP nonce is 12 bytes")
    header = _REQUEST_HEADER.pack(VERSION, OP_MAP, 0, lifetime_s, _client_address(client_ip))
    body = _MAP_BODY.pack(nonce, UDP, b"\0\0\0", internal_port, suggested_external_port, _ANY_V4)
    return header + body


def _header(data: bytes, opcode: int) -> tuple[int, int, int]:
    """(result code, lifetime, epoch) of a response to ``opcode``; raises on anything else."""
    if not isinstance(data, bytes | bytearray):
        raise PortMapWireError("PCP reply is not bytes")
    if len(data) > MAX_PACKET:
        raise PortMapWireError(f"PCP reply of {len(data)} bytes is longer than {MAX_PACKET}")
    if len(data) >= 4 and data[0] == 0:
        # A NAT-PMP server's answer to a version it does not speak (RFC 6887 section 9).
        code = int.from_bytes(data[2:4], "big")
        if code == UNSUPP_VERSION:
            raise PortMapRefused("the gateway speaks NAT-PMP, not PCP", code=UNSUPP_VERSION)
        raise PortMapWireError(f"NAT-PMP reply (result {code}) to a PCP request")
    if len(data) < HEADER_SIZE:
        raise PortMapWireError(f"PCP reply of {len(data)} bytes is too short")
    if len(data) % 4:
        raise PortMapWireError(f"PCP reply of {len(data)} bytes is not a multiple of 4")
    version, op, _, result, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(bytes(data))
    if version != VERSION:
        if result == UNSUPP_VERSION:
            raise PortMapRefused(f"the gateway speaks PCP version {version}, not {VERSION}",
                                 code=UNSUPP_VERSION)
        raise PortMapWireError(f"PCP reply with version {version}")
    if not op & RESPONSE_BIT:
        raise PortMapWireError("PCP packet is a request, not a response")
    if op & ~RESPONSE_BIT != opcode:
        raise PortMapWireError(f"PCP reply to opcode {op & ~RESPONSE_BIT}, not {opcode}")
    if result != SUCCESS:
        raise PortMapRefused(f"PCP: {RESULTS.get(result, f'result code {result}')}", code=result)
    return result, lifetime, epoch


def decode_announce(data: bytes) -> int:
    """The gateway's epoch from an ANNOUNCE response."""
    return _header(data, OP_ANNOUNCE)[2]


def decode_map(data: bytes, nonce: bytes, internal_port: int) -> PcpMapping:
    """The mapping a MAP response grants to our request (same nonce, UDP, same internal port)."""
    _, lifetime, epoch = _header(data, OP_MAP)
    if len(data) < HEADER_SIZE + MAP_SIZE:
        raise PortMapWireError(f"PCP MAP reply of {len(data)} bytes is too short")
    _check_options(bytes(data[HEADER_SIZE + MAP_SIZE:]))
    their_nonce, protocol, _, internal, external, packed = _MAP_BODY.unpack_from(bytes(data), HEADER_SIZE)
    if their_nonce != nonce:
        raise PortMapWireError("PCP MAP reply with another nonce")
    if protocol != UDP:
        raise PortMapWireError(f"PCP MAP reply for protocol {protocol}, not UDP")
    if internal != internal_port:
        raise PortMapWireError(f"PCP MAP reply for internal port {internal}, not {internal_port}")
    address = ipaddress.IPv6Address(packed)
    mapped = address.ipv4_mapped
    if mapped is None:
        raise PortMapWireError(f"PCP MAP reply with external address {address}, not IPv4")
    if lifetime and (external == 0 or mapped.is_unspecified or mapped.is_multicast or mapped.is_loopback):
        raise PortMapWireError(f"PCP MAP reply with unusable external {mapped}:{external}")
    return PcpMapping(internal_port=internal, external_ip=str(mapped), external_port=external,
                      lifetime_s=lifetime, epoch_s=epoch)


def _check_options(options: bytes) -> None:
    """Walk the options (code, reserved, length, data padded to 4) without reading past the end."""
    offset = 0
    for _ in range(MAX_PACKET // 4):
        if offset == len(options):
            return
        if offset + 4 > len(options):
            raise PortMapWireError("PCP option header cut short")
        length = int.from_bytes(options[offset + 2:offset + 4], "big")
        padded = (length + 3) // 4 * 4
        if offset + 4 + padded > len(options):
            raise PortMapWireError("PCP option longer than the reply")
        offset += 4 + padded
    raise PortMapWireError("too many PCP options")
