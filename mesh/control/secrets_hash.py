"""Party secrets: generated with 256 bits of entropy, stored only as a salted SHA-256.

A slow password hash is not needed: the secret is random, not chosen by a person,
so it cannot be guessed from its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCHEME = "sha256"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(salt + secret.encode("utf-8")).hexdigest()
    return f"{SCHEME}${salt.hex()}${digest}"


def check_secret(secret: str, stored: str) -> bool:
    try:
        scheme, salt_hex, _ = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != SCHEME:
        return False
    return hmac.compare_digest(hash_secret(secret, salt), stored)
