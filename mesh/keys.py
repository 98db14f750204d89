"""WireGuard keys: generation, validation, and the private key file (mode 0600).

A ``PrivateKey`` never shows its secret in ``repr``/``str``, so it cannot leak into a
log line or an event by accident; ``secret_base64()`` is the one explicit way out.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

from wireguard_tools import WireguardKey

from mesh.interfaces import MeshError


class InvalidKeyError(MeshError):
    """A WireGuard key that is not 32 bytes of base64 (or hex)."""


class KeyFileError(MeshError):
    """The private key file cannot be read, written or trusted."""


_BASE64_KEY = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


def _parse(text: str, what: str) -> WireguardKey:
    text = text.strip()
    if not (_BASE64_KEY.fullmatch(text) or _HEX_KEY.fullmatch(text)):
        raise InvalidKeyError(f"invalid WireGuard {what}: expected 32 bytes in base64 (44 characters)")
    key = WireguardKey(text)
    if not key:
        raise InvalidKeyError(f"invalid WireGuard {what}: all zeros")
    return key


def validate_public_key(text: str) -> str:
    """The key in canonical base64, or ``InvalidKeyError`` (the message never echoes it)."""
    if not isinstance(text, str):
        raise InvalidKeyError("invalid WireGuard public key: not a string")
    return str(_parse(text, "public key"))


class PrivateKey:
    __slots__ = ("_key",)

    def __init__(self, key: WireguardKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(WireguardKey.generate())

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        return cls(_parse(text, "private key"))

    @property
    def public_key(self) -> str:
        return str(self._key.public_key())

    def secret_base64(self) -> str:
        return str(self._key)

    def secret_hex(self) -> str:
        return self._key.hex

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public_key}, secret=<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self.public_key)


def generate_keypair() -> tuple[PrivateKey, str]:
    key = PrivateKey.generate()
    return key, key.public_key


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write atomically with mode 0600 (never readable by anyone else, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (key.secret_base64() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_private_key(path: Path) -> PrivateKey:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                               "it must be 0600")
        text = path.read_text()
    except OSError as error:
        raise KeyFileError(f"cannot read private key {path}: {error.strerror}") from None
    try:
        return PrivateKey.from_base64(text)
    except InvalidKeyError:
        raise KeyFileError(f"{path} does not hold a WireGuard private key") from None


def load_or_create_private_key(path: Path) -> PrivateKey:
    """The node's key: read from ``path``, or generated and stored there on first use."""
    if path.exists():
        return load_private_key(path)
    key = PrivateKey.generate()
    try:
        write_private_key(path, key)
    except OSError as error:
        raise KeyFileError(f"cannot write private key {path}: {error.strerror}") from None
    return key
