"""Node identity: a WireGuard (X25519) key pair, and the proof that a node holds its key.

X25519 keys cannot sign, so possession is proven by Diffie-Hellman: the server sends
a fresh ephemeral public key and a nonce, and the node answers with::

    HMAC-SHA256(SHA256(DH(node, server_ephemeral) | DH(node, server_static)), context)

Only the holder of the node's private key (or of the server's keys, which never leave
the server) can compute it. The context binds the proof to this nonce, this node key,
this ephemeral key and to the server it was made for (``ServerBinding``): the server's
static key, the fingerprint of the TLS certificate the node saw, and the host:port it
dialed. The server checks all three against its own, so a rogue server that relays the
real server's challenge gets a proof the real server refuses. The server answers with
its own proof over ``DH(server_static, node)``, so a node knows it reached the holder
of the key its invite names.
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

PROOF_CONTEXT = b"lanrage-control-v2|"
SERVER_PROOF_CONTEXT = b"lanrage-control-server-v2|"
MAX_AUTHORITY = 300
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


@dataclass(frozen=True)
class ServerBinding:
    """The server a proof is made for: its static key, its TLS certificate, the address dialed."""

    server_key: str  # base64 X25519 public key
    fingerprint: str  # SHA-256 hex of the server's DER certificate; "" over plain ws://
    authority: str  # host:port as the node dialed it, lower case

    def encode(self) -> bytes:
        fingerprint = bytes.fromhex(self.fingerprint) if self.fingerprint else b""
        authority = self.authority.lower().encode("utf-8", "replace")[:MAX_AUTHORITY]
        return (decode_key(self.server_key) + len(fingerprint).to_bytes(1, "big") + fingerprint
                + len(authority).to_bytes(2, "big") + authority)


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

    def prove(self, server_ephemeral: str, nonce: str, binding: ServerBinding) -> str:
        """The answer to a server's challenge (both fields as base64), for the server ``binding`` names."""
        ephemeral_raw = decode_key(server_ephemeral)
        own = X25519PrivateKey.from_private_bytes(self.private_key)
        shared = _exchange(own, ephemeral_raw) + _exchange(own, decode_key(binding.server_key))
        return _mac(shared, _nonce_bytes(nonce), decode_key(self.public_key), ephemeral_raw, binding)

    def server_proof(self, node_public_key: str, proof: str) -> str:
        """As the server's static key: the proof that this server holds it, for one login."""
        shared = _exchange(X25519PrivateKey.from_private_bytes(self.private_key), decode_key(node_public_key))
        digest = hmac.new(shared, SERVER_PROOF_CONTEXT + proof.encode("ascii", "replace"),
                          hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    def check_server_proof(self, server_key: str, proof: str, server_proof: str) -> bool:
        """As a node: did the holder of ``server_key`` answer our ``proof``?"""
        shared = _exchange(X25519PrivateKey.from_private_bytes(self.private_key), decode_key(server_key))
        digest = hmac.new(shared, SERVER_PROOF_CONTEXT + proof.encode("ascii", "replace"),
                          hashlib.sha256).digest()
        return hmac.compare_digest(base64.b64encode(digest), server_proof.encode("ascii", "replace"))


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

    def verify(self, public_key: str, proof: str, server: Identity, binding: ServerBinding) -> bool:
        """As the server holding ``server`` (its static key): is ``proof`` made for ``binding``?"""
        try:
            node_raw = decode_key(public_key)
            static = X25519PrivateKey.from_private_bytes(server.private_key)
            shared = _exchange(self.ephemeral, node_raw) + _exchange(static, node_raw)
            expected = _mac(shared, self.nonce, node_raw, decode_key(self.ephemeral_public), binding)
        except (IdentityError, ValueError):
            return False
        return hmac.compare_digest(expected.encode("ascii"), proof.encode("ascii", "replace"))


def _exchange(private: X25519PrivateKey, peer_raw: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_raw))
    except ValueError:
        # A low-order point gives an all-zero secret: anybody could "prove" it.
        raise IdentityError("the public key is not a usable X25519 point") from None


def _mac(shared: bytes, nonce: bytes, node_raw: bytes, ephemeral_raw: bytes, binding: ServerBinding) -> str:
    key = hashlib.sha256(shared).digest()
    digest = hmac.new(key, PROOF_CONTEXT + nonce + node_raw + ephemeral_raw + binding.encode(),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _nonce_bytes(nonce: str) -> bytes:
    try:
        raw = base64.b64decode(nonce.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise IdentityError("the challenge nonce is not base64") from None
    if len(raw) != NONCE_BYTES:
        raise IdentityError("the challenge nonce has the wrong length")
    return raw
