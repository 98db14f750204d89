"""Relay tickets: how the control plane allocates a relay session without talking to the relay.

The control server and every relay share a secret. For a pair of peers the control
server picks a random session id and an expiry, and derives one key per side::

    key(side) = HMAC-SHA256(secret, "lanrage-relay-v1" | session | party | peer_a | peer_b
                                    | expiry | side)

It hands each peer its own ticket (the fields plus its side's key) over the
authenticated control channel. The key never crosses the relay's UDP port: a peer
proves it holds it with the MAC of a HELLO carrying a fresh nonce and timestamp. The
relay recomputes the key from the secret, so it needs no call from the control server,
a peer cannot speak for the other side, and a captured HELLO cannot be replayed.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from hashlib import sha256

DEFAULT_TTL_S = 24 * 3600
_LABEL = b"lanrage-relay-v1"
_REVOKE_LABEL = b"lanrage-relay-revoke-v1"


def side_key(secret: bytes, session_id: str, party_id: str, peer_a: str, peer_b: str, expiry_s: int,
             side: int) -> bytes:
    fields = [_LABEL, *(value.encode() for value in (session_id, party_id, peer_a, peer_b)),
              str(expiry_s).encode(), str(side).encode()]
    message = b"".join(len(field).to_bytes(2, "big") + field for field in fields)
    return hmac.new(secret, message, sha256).digest()


def revoke_key(secret: bytes) -> bytes:
    """The key of REVOKE datagrams: only the control server and the relays (the secret's holders) have it."""
    return hmac.new(secret, _REVOKE_LABEL, sha256).digest()


@dataclass(frozen=True)
class RelayTicket:
    """What one peer needs to use one relay session. ``key_hex`` is a secret: never log it."""

    relay: str
    session_id: str
    party_id: str
    peer_a: str
    peer_b: str
    side: int
    expiry_s: int
    key_hex: str

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.key_hex)

    @property
    def local_peer(self) -> str:
        return self.peer_a if self.side == 0 else self.peer_b

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RelayTicket:
        data = json.loads(text)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return (f"RelayTicket(relay={self.relay!r}, session_id={self.session_id!r}, side={self.side}, "
                f"expiry_s={self.expiry_s})")


def new_session_id() -> str:
    return secrets.token_hex(8)


def issue_tickets(secret: bytes, relay: str, party_id: str, peer_a: str, peer_b: str,
                  ttl_s: int = DEFAULT_TTL_S, session_id: str | None = None,
                  now: float | None = None) -> tuple[RelayTicket, RelayTicket]:
    """The control server's call: a new session on ``relay`` and one ticket for each peer."""
    session = session_id or new_session_id()
    expiry = int((time.time() if now is None else now) + ttl_s)
    return tuple(  # type: ignore[return-value]
        RelayTicket(relay, session, party_id, peer_a, peer_b, side, expiry,
                    side_key(secret, session, party_id, peer_a, peer_b, expiry, side).hex())
        for side in (0, 1))
