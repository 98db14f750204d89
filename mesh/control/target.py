"""Where a node dials its control server, and what it pins there.

A control URL may carry the server's identity in its query string, as the server
prints it at start and as every invite carries it::

    wss://203.0.113.10:8667/?key=<server static key, base64>&fp=<certificate SHA-256, hex>

``key`` pins the server's static X25519 key: the node refuses a server that does not
prove it holds that key, and binds its login proof to it. ``fp`` pins the TLS
certificate: the node checks the certificate's fingerprint instead of a CA chain
(self-signed certificates work), before it sends a single byte of its own. Without
``fp``, a ``wss://`` URL is verified against the system's CAs and host name.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from mesh.control.identity import IdentityError, decode_key, encode_key

MAX_URL_CHARS = 1024
_FINGERPRINT_HEX = 64


class TargetError(ValueError):
    """A control URL that cannot be used; the message is for the user."""


@dataclass(frozen=True)
class ControlTarget:
    url: str  # what to dial: the URL without the pins
    authority: str  # host:port, lower case, as dialed (the login proof is bound to it)
    secure: bool
    server_key: str | None = None
    fingerprint: str | None = None

    @classmethod
    def parse(cls, url: str) -> ControlTarget:
        if len(url) > MAX_URL_CHARS:
            raise TargetError(f"a control URL is at most {MAX_URL_CHARS} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise TargetError(f"control URL {url[:80]!r} is not a URL: {error}") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise TargetError(f"control URL {url[:80]!r} must be ws://HOST:PORT or wss://HOST:PORT")
        try:
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=8)
        except ValueError:  # found by bench/fuzz.py: too many fields is a ValueError of its own
            raise TargetError("the control URL's query has too many fields") from None
        key = _single(query, "key")
        fingerprint = _single(query, "fp")
        if key is not None:
            # A query decodes "+" to a space, and base64 has no space: a "+" typed as is comes back.
            key = key.replace(" ", "+")
            problem = key_problem(key)
            if problem is not None:
                raise TargetError("the control URL's key= is not a server key (base64 of 32 bytes): "
                                  + problem)
        if fingerprint is not None:
            fingerprint = fingerprint.lower()
            if len(fingerprint) != _FINGERPRINT_HEX or any(c not in "0123456789abcdef" for c in fingerprint):
                raise TargetError("the control URL's fp= is not a SHA-256 certificate fingerprint (64 hex)")
            if parts.scheme != "wss":
                raise TargetError("fp= pins a TLS certificate: use it with wss://")
        secure = parts.scheme == "wss"
        host = parts.hostname.lower()
        shown_host = f"[{host}]" if ":" in host else host
        authority = f"{shown_host}:{port if port is not None else (443 if secure else 80)}"
        rest = {name: values for name, values in query.items() if name not in ("key", "fp")}
        dial = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest, doseq=True), ""))
        return cls(dial, authority, secure, key, fingerprint)

    def pinned(self, server_key: str | None, fingerprint: str | None) -> str:
        """This URL with the given pins: what an invite carries."""
        parts = urlsplit(self.url)
        query = parse_qs(parts.query, keep_blank_values=True)
        if server_key:
            query["key"] = [server_key]
        if fingerprint:
            query["fp"] = [fingerprint]
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query, doseq=True), ""))

    def client_tls(self) -> ssl.SSLContext | None:
        if not self.secure:
            return None
        context = ssl.create_default_context()
        if self.fingerprint:
            # The pin replaces the CA chain: the fingerprint is checked right after the handshake.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


_KEY_CHARS = 44  # base64 of 32 bytes, with its one "="
_BASE64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def key_problem(key: str) -> str | None:
    """What is wrong with the form of a pinned server key, or None when it is one.

    Only a key written exactly as the server prints it passes: the last character before the
    "=" carries 2 unused bits, so a typo there decodes to the same bytes as another spelling,
    and would otherwise read as another server's key.
    """
    if len(key) != _KEY_CHARS:
        return f"it has {len(key)} characters, a key has {_KEY_CHARS}: copy it again, in full"
    wrong = next((c for c in key[:-1] if c not in _BASE64_ALPHABET), None)
    if wrong is not None or not key.endswith("="):
        shown = repr(wrong) if wrong is not None and wrong.isprintable() else "a character"
        return (f"{shown} is not a base64 character" if wrong is not None
                else "it must end with '='") + ": check it for a typo"
    try:
        raw = decode_key(key)
    except IdentityError as error:
        return str(error)
    if encode_key(raw) != key:
        return f"its last character before '=' cannot end a key ({key[-2]!r}): check it for a typo"
    return None


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise TargetError(f"the control URL names {name}= more than once")
    return values[0]


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def peer_fingerprint(transport: object) -> str:
    """The SHA-256 of the certificate the TLS peer presented ("" over plain TCP)."""
    get_extra = getattr(transport, "get_extra_info", None)
    ssl_object = get_extra("ssl_object") if get_extra is not None else None
    if ssl_object is None:
        return ""
    der = ssl_object.getpeercert(binary_form=True)
    return fingerprint_of(der) if der else ""


def server_tls(cert_file: Path, key_file: Path) -> tuple[ssl.SSLContext, str]:
    """The server's TLS context and its certificate's fingerprint (what invites pin)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
        der = ssl.PEM_cert_to_DER_cert(Path(cert_file).read_text())
    except (OSError, ssl.SSLError, ValueError) as error:
        raise TargetError(f"cannot use the TLS certificate {cert_file} (key {key_file}): {error}") from None
    return context, fingerprint_of(der)


def self_signed(cert_file: Path, key_file: Path, hosts: list[str]) -> None:
    """Write a self-signed certificate for ``hosts`` (mode 0600 key): pinned by fingerprint, no CA."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts or ["localhost"]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lanrage control server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=3650))
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .sign(key, hashes.SHA256()))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    Path(cert_file).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
