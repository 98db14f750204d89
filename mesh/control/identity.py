"""Node identity: a WireGuard (X25519) key pair, and the proof that a node holds its key.

X25519 keys cannot sign, so possession is proven by Diffie-Hellman: the server sends
a fresh ephemeral public key and a nonce, and the node answers with
``HMAC-SHA256(DH(node_private, server_ephemeral), context)``. Only the holder of the
private key (or of the server's ephemeral key, which never leaves the server) can
compute it. The context binds the proof to this nonce, this node key and this
ephemeral key, so a proof cannot be replayed on another connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROOF_CONTEXT = b"lanrage-control-v1|"
KEY_BYTES = 32
NONCE_BYTES = 32


class IdentityError(ValueError):
    """A key or a proof that is not well formed; the message is for the user."""


def decode_key(text: str) -> bytes:
    """A WireGuard key (standard base64 of 32 bytes) to raw bytes."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise IdentityError("a key must be the base64 of 32 bytes, as `wg genkey` prints it") from None
    if len(raw) != KEY_BYTES:
        raise IdentityError("a key must be the base64 of 32 bytes, as `wg genkey` prints it")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def peer_id_for(public_key: str) -> str:
    """The stable peer id of a WireGuard public key: anyone can compute it, nobody can choose it."""
    return hashlib.sha256(decode_key(public_key)).hexdigest()[:16]


def _public_raw(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Identity:
    """A node's key pair. ``repr`` never shows the private key."""

    private_key: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> Identity:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private_key(cls, text: str) -> Identity:
        return cls(decode_key(text))

    @property
    def private_key_text(self) -> str:
        return encode_key(self.private_key)

    @property
    def public_key(self) -> str:
        return encode_key(_public_raw(X25519PrivateKey.from_private_bytes(self.private_key)))

    @property
    def peer_id(self) -> str:
        return peer_id_for(self.public_key)

    def prove(self, server_ephemeral: str, nonce: str) -> str:
        """The answer to a server's challenge (both fields as base64)."""
        ephemeral_raw = decode_key(server_ephemeral)
        shared = _exchange(X25519PrivateKey.from_private_bytes(self.private_key), ephemeral_raw)
        return _mac(shared, _nonce_bytes(nonce), decode_key(self.public_key), ephemeral_raw)


@dataclass(frozen=True)
class Challenge:
    """One server challenge: a fresh ephemeral key pair and a nonce, used once."""

    ephemeral: X25519PrivateKey = field(repr=False)
    nonce: bytes

    @classmethod
    def new(cls) -> Challenge:
        return cls(X25519PrivateKey.generate(), secrets.token_bytes(NONCE_BYTES))

    @property
    def ephemeral_public(self) -> str:
        return encode_key(_public_raw(self.ephemeral))

    @property
    def nonce_text(self) -> str:
        return base64.b64encode(self.nonce).decode("ascii")

    def verify(self, public_key: str, proof: str) -> bool:
        try:
            node_raw = decode_key(public_key)
            shared = _exchange(self.ephemeral, node_raw)
        except IdentityError:
            return False
        expected = _mac(shared, self.nonce, node_raw, decode_key(self.ephemeral_public))
        return hmac.compare_digest(expected.encode("ascii"), proof.encode("ascii", "replace"))


def _exchange(private: X25519PrivateKey, peer_raw: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_raw))
    except ValueError:
        # A low-order point gives an all-zero secret: anybody could "prove" it.
        raise IdentityError("the public key is not a usable X25519 point") from None


def _mac(shared: bytes, nonce: bytes, node_raw: bytes, ephemeral_raw: bytes) -> str:
    digest = hmac.new(shared, PROOF_CONTEXT + nonce + node_raw + ephemeral_raw, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _nonce_bytes(nonce: str) -> bytes:
    try:
        raw = base64.b64decode(nonce.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise IdentityError("the challenge nonce is not base64") from None
    if len(raw) != NONCE_BYTES:
        raise IdentityError("the challenge nonce has the wrong length")
    return raw
