"""The relay's wire protocol: control messages beside raw WireGuard packets on one UDP port.

A datagram is either a WireGuard message, forwarded untouched between the two bound
addresses of a session, or a relay control message starting with ``MAGIC``. The two
never collide: a WireGuard message starts with its type 1..4 followed by three zero
bytes, a control message with ``b"LRy"``.

Control messages (big-endian)::

    MAGIC(3) type(1) body

    HELLO / BYE   side(1) expiry_s(8) timestamp_ms(8) nonce(16) cookie(16)
                  session_id party_id peer_a peer_b   (each: len(1) + ASCII)
                  mac(32) = HMAC-SHA256(side key, every byte before it)
    HELLO_OK      nonce(16) side(1) peer_bound(1)
    REFUSED       nonce(16) reason(1)
    COOKIE        nonce(16) cookie(16)
    REVOKE        timestamp_ms(8) nonce(16) expiry_s(8) session_id (len(1) + ASCII)
                  mac(32) = HMAC-SHA256(revocation key, every byte before it)
    PING / PONG   probe id(8) padding(any)

Return routability: a HELLO binds its source address only when it echoes the cookie
the relay sent to that very address (a ``COOKIE`` answer to a HELLO without one, or
with a stale one). A forged source address never sees its cookie, so it cannot be
bound. Every answer is smaller than the datagram it answers.

The side key is derived from the relay secret (see ``tickets``) and travels only over
the control plane; the relay recomputes it, so it holds no per-session state before a
valid HELLO arrives. Every parser returns None on malformed input and never raises.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from hashlib import sha256

MAGIC = b"LRy"
HELLO = 1
HELLO_OK = 2
REFUSED = 3
PING = 4
PONG = 5
BYE = 6
COOKIE = 7
REVOKE = 8
CONTROL_TYPES = (HELLO, HELLO_OK, REFUSED, PING, PONG, BYE, COOKIE, REVOKE)

# Refusal reasons.
BAD_MAC = 1
EXPIRED = 2
REPLAYED = 3
STALE = 4
SELF_PAIRED = 5  # a session whose two sides are one peer, or one address
LIMITED = 6  # a session or HELLO cap of this peer, this session or the relay is reached
REVOKED = 7  # the control server ended this session (a member left the party)
REFUSAL_NAMES = {BAD_MAC: "bad_mac", EXPIRED: "expired", REPLAYED: "replayed", STALE: "stale",
                 SELF_PAIRED: "self_paired", LIMITED: "limited", REVOKED: "revoked"}

MAX_ID = 64
MAC_LEN = 32
NONCE_LEN = 16
COOKIE_LEN = 16
NO_COOKIE = bytes(COOKIE_LEN)
_HELLO_FIXED = struct.Struct("!BQQ16s16s")

# WireGuard message types and their exact sizes (transport data: 32 + 16n bytes).
WG_INITIATION, WG_RESPONSE, WG_COOKIE, WG_TRANSPORT = 1, 2, 3, 4
WG_SIZES = {WG_INITIATION: 148, WG_RESPONSE: 92, WG_COOKIE: 64}
WG_MIN_TRANSPORT = 32
MAX_DATAGRAM = 65535


@dataclass(frozen=True)
class Hello:
    """A HELLO or a BYE: binds (or unbinds) the sender's address to one side of a session."""

    kind: int
    side: int
    expiry_s: int
    timestamp_ms: int
    nonce: bytes
    cookie: bytes
    session_id: str
    party_id: str
    peer_a: str
    peer_b: str
    mac: bytes
    signed: bytes  # the bytes the MAC covers


def is_wireguard(data: bytes) -> bool:
    """True for a datagram shaped like a WireGuard message (type, reserved zeros, size)."""
    if len(data) < WG_MIN_TRANSPORT or data[1:4] != b"\0\0\0":
        return False
    kind = data[0]
    if kind == WG_TRANSPORT:
        return len(data) % 16 == 0
    return WG_SIZES.get(kind) == len(data)


def is_control(data: bytes) -> bool:
    return len(data) >= 4 and data[:3] == MAGIC


def control_type(data: bytes) -> int | None:
    if not is_control(data) or data[3] not in CONTROL_TYPES:
        return None
    return data[3]


def _ident(value: str) -> bytes:
    raw = value.encode("ascii")
    if not raw or len(raw) > MAX_ID or not raw.isascii() or not all(33 <= c < 127 for c in raw):
        raise ValueError(f"identifier {value!r} must be 1..{MAX_ID} printable ASCII characters")
    return bytes([len(raw)]) + raw


def encode_hello(kind: int, key: bytes, side: int, expiry_s: int, timestamp_ms: int, nonce: bytes,
                 session_id: str, party_id: str, peer_a: str, peer_b: str,
                 cookie: bytes = NO_COOKIE) -> bytes:
    if kind not in (HELLO, BYE) or side not in (0, 1) or len(nonce) != NONCE_LEN or len(cookie) != COOKIE_LEN:
        raise ValueError("bad hello fields")
    body = (MAGIC + bytes([kind]) + _HELLO_FIXED.pack(side, expiry_s, timestamp_ms, nonce, cookie)
            + _ident(session_id) + _ident(party_id) + _ident(peer_a) + _ident(peer_b))
    return body + hmac.new(key, body, sha256).digest()


def parse_hello(data: bytes) -> Hello | None:
    try:
        if len(data) < 4 + _HELLO_FIXED.size + 4 * 2 + MAC_LEN or data[:3] != MAGIC:
            return None
        kind = data[3]
        if kind not in (HELLO, BYE):
            return None
        side, expiry_s, timestamp_ms, nonce, cookie = _HELLO_FIXED.unpack_from(data, 4)
        if side not in (0, 1):
            return None
        offset = 4 + _HELLO_FIXED.size
        idents: list[str] = []
        for _ in range(4):
            length = data[offset]
            raw = data[offset + 1:offset + 1 + length]
            if not 0 < length <= MAX_ID or len(raw) != length or not all(33 <= c < 127 for c in raw):
                return None
            idents.append(raw.decode("ascii"))
            offset += 1 + length
        if len(data) != offset + MAC_LEN:
            return None
        return Hello(kind, side, expiry_s, timestamp_ms, nonce, cookie, idents[0], idents[1], idents[2],
                     idents[3], data[offset:], data[:offset])
    except (IndexError, struct.error):
        return None


def hello_mac_ok(hello: Hello, key: bytes) -> bool:
    return hmac.compare_digest(hmac.new(key, hello.signed, sha256).digest(), hello.mac)


def encode_hello_ok(nonce: bytes, side: int, peer_bound: bool) -> bytes:
    return MAGIC + bytes([HELLO_OK]) + nonce + bytes([side, int(peer_bound)])


def parse_hello_ok(data: bytes) -> tuple[bytes, int, bool] | None:
    if len(data) != 4 + NONCE_LEN + 2 or data[:4] != MAGIC + bytes([HELLO_OK]):
        return None
    side, bound = data[20], data[21]
    if side not in (0, 1) or bound not in (0, 1):
        return None
    return data[4:20], side, bool(bound)


def encode_refused(nonce: bytes, reason: int) -> bytes:
    return MAGIC + bytes([REFUSED]) + nonce + bytes([reason])


def parse_refused(data: bytes) -> tuple[bytes, int] | None:
    if len(data) != 4 + NONCE_LEN + 1 or data[:4] != MAGIC + bytes([REFUSED]):
        return None
    if data[20] not in REFUSAL_NAMES:
        return None
    return data[4:20], data[20]


_REVOKE_FIXED = struct.Struct("!Q16sQ")


@dataclass(frozen=True)
class Revoke:
    """The control server's order to end a session (a member left); MAC'd with the relay secret."""

    timestamp_ms: int
    nonce: bytes
    expiry_s: int
    session_id: str
    mac: bytes
    signed: bytes


def encode_revoke(key: bytes, session_id: str, expiry_s: int, timestamp_ms: int, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError("bad revoke fields")
    body = MAGIC + bytes([REVOKE]) + _REVOKE_FIXED.pack(timestamp_ms, nonce, expiry_s) + _ident(session_id)
    return body + hmac.new(key, body, sha256).digest()


def parse_revoke(data: bytes) -> Revoke | None:
    try:
        if len(data) < 4 + _REVOKE_FIXED.size + 2 + MAC_LEN or data[:4] != MAGIC + bytes([REVOKE]):
            return None
        timestamp_ms, nonce, expiry_s = _REVOKE_FIXED.unpack_from(data, 4)
        offset = 4 + _REVOKE_FIXED.size
        length = data[offset]
        raw = data[offset + 1:offset + 1 + length]
        if not 0 < length <= MAX_ID or len(raw) != length or not all(33 <= c < 127 for c in raw):
            return None
        offset += 1 + length
        if len(data) != offset + MAC_LEN:
            return None
        return Revoke(timestamp_ms, nonce, expiry_s, raw.decode("ascii"), data[offset:], data[:offset])
    except (IndexError, struct.error):
        return None


def revoke_mac_ok(revoke: Revoke, key: bytes) -> bool:
    return hmac.compare_digest(hmac.new(key, revoke.signed, sha256).digest(), revoke.mac)


def encode_cookie(nonce: bytes, cookie: bytes) -> bytes:
    return MAGIC + bytes([COOKIE]) + nonce + cookie


def parse_cookie(data: bytes) -> tuple[bytes, bytes] | None:
    """(nonce, cookie) of a COOKIE answer, None if malformed."""
    if len(data) != 4 + NONCE_LEN + COOKIE_LEN or data[:4] != MAGIC + bytes([COOKIE]):
        return None
    return data[4:4 + NONCE_LEN], data[4 + NONCE_LEN:]


def encode_ping(probe_id: int, size: int = 12) -> bytes:
    return MAGIC + bytes([PING]) + probe_id.to_bytes(8, "big") + b"\0" * max(0, size - 12)


def parse_probe(data: bytes, kind: int) -> int | None:
    """The probe id of a PING or PONG (``kind``), None if malformed."""
    if len(data) < 12 or len(data) > 1200 or data[:4] != MAGIC + bytes([kind]):
        return None
    return int.from_bytes(data[4:12], "big")


def pong_for(ping: bytes) -> bytes:
    """The PONG is the PING with its type changed: never bigger, so the relay amplifies nothing."""
    return MAGIC + bytes([PONG]) + ping[4:]
