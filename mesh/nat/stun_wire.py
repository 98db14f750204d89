"""Our own STUN Binding Response parser (RFC 3489 and RFC 5389), strict and never raising.

pystun3 parses responses with unchecked slicing and a lookup that raises on an unknown
message type, and it loops on attribute lengths it does not pad. Every datagram is
therefore parsed here first; only a valid Binding Response reaches pystun3, rewritten
into the canonical RFC 3489 form it understands (MAPPED-, SOURCE-, CHANGED-ADDRESS).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

BINDING_REQUEST = 0x0001
BINDING_RESPONSE = 0x0101
MAGIC_COOKIE = 0x2112A442

MAPPED_ADDRESS = 0x0001
SOURCE_ADDRESS = 0x0004
CHANGED_ADDRESS = 0x0005
XOR_MAPPED_ADDRESS = 0x0020
XOR_MAPPED_ADDRESS_OLD = 0x8020
OTHER_ADDRESS = 0x802C  # RFC 5780's name for CHANGED-ADDRESS

_HEADER = struct.Struct("!HH16s")
MAX_MESSAGE = 2048

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class StunResponse:
    transaction_id: bytes
    mapped: Endpoint | None
    source: Endpoint | None
    changed: Endpoint | None


def _address(value: bytes, xor: bool, transaction_id: bytes) -> Endpoint | None:
    if len(value) != 8 or value[1] != 0x01:  # IPv4 only
        return None
    port = int.from_bytes(value[2:4], "big")
    raw = int.from_bytes(value[4:8], "big")
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw ^= MAGIC_COOKIE
    return str(ipaddress.IPv4Address(raw)), port


def parse_response(data: bytes) -> StunResponse | None:
    """A Binding Response, or None for anything malformed or of another type."""
    if not 20 <= len(data) <= MAX_MESSAGE:
        return None
    kind, length, transaction_id = _HEADER.unpack_from(data)
    if kind != BINDING_RESPONSE or length != len(data) - 20 or length % 4:
        return None
    is_5389 = transaction_id[:4] == MAGIC_COOKIE.to_bytes(4, "big")
    found: dict[int, Endpoint | None] = {}
    offset = 20
    while offset < len(data):
        if offset + 4 > len(data):
            return None
        attr, size = struct.unpack_from("!HH", data, offset)
        padded = size + (-size % 4)
        value = data[offset + 4:offset + 4 + size]
        if len(value) != size or offset + 4 + padded > len(data):
            return None
        if attr in (MAPPED_ADDRESS, SOURCE_ADDRESS, CHANGED_ADDRESS, OTHER_ADDRESS):
            found.setdefault(CHANGED_ADDRESS if attr == OTHER_ADDRESS else attr,
                             _address(value, False, transaction_id))
        elif attr in (XOR_MAPPED_ADDRESS, XOR_MAPPED_ADDRESS_OLD) and is_5389:
            found[XOR_MAPPED_ADDRESS] = _address(value, True, transaction_id)
        offset += 4 + padded
    mapped = found.get(XOR_MAPPED_ADDRESS) or found.get(MAPPED_ADDRESS)
    if mapped is None:
        return None
    return StunResponse(transaction_id, mapped, found.get(SOURCE_ADDRESS), found.get(CHANGED_ADDRESS))


def _encode_address(attr: int, endpoint: Endpoint) -> bytes:
    return struct.pack("!HHBBH", attr, 8, 0, 1, endpoint[1]) + ipaddress.IPv4Address(endpoint[0]).packed


def canonical(response: StunResponse) -> bytes:
    """The response re-encoded as plain RFC 3489 attributes, safe for pystun3's parser."""
    body = b""
    for attr, endpoint in ((MAPPED_ADDRESS, response.mapped), (SOURCE_ADDRESS, response.source),
                           (CHANGED_ADDRESS, response.changed)):
        if endpoint is not None:
            body += _encode_address(attr, endpoint)
    return _HEADER.pack(BINDING_RESPONSE, len(body), response.transaction_id) + body


def encode_response(transaction_id: bytes, mapped: Endpoint, source: Endpoint | None = None,
                    changed: Endpoint | None = None) -> bytes:
    """A Binding Response (used by tests and the fuzzers as a valid seed)."""
    return canonical(StunResponse(transaction_id, mapped, source, changed))
