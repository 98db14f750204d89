"""The invite: one copyable string that carries where to join and the party secret.

Format: ``lanrage1-`` followed by the unpadded base64url of a small JSON object
``{"c": control_url, "p": party_id, "n": party_name, "s": secret}``. The control URL
is ``ws://host:port`` (or ``wss://``) for a control server, with the server's key and
certificate fingerprint pinned in its query (``?key=...&fp=...``, see
``mesh.control.target``), or ``file:///dir`` for the local file-based discovery mode.
The secret is only ever in the invite and in the join request; the server stores a
salted hash of it.

Anyone can mint an invite, so decoding trusts nothing: the text is bounded, the JSON
must be one flat object of short strings, the URL must parse, and a ``file://`` path
must be absolute without ``..``. Every failure is an ``InviteError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from mesh.control.target import ControlTarget, TargetError
from mesh.text import printable_name

PREFIX = "lanrage1-"
MAX_INVITE_CHARS = 2048
MAX_FIELD_CHARS = 1024
_PARTY_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


class InviteError(ValueError):
    """An invite that cannot be read; the message is for the user."""


@dataclass(frozen=True)
class Invite:
    control_url: str
    party_id: str
    party_name: str
    secret: str = field(repr=False)

    def encode(self) -> str:
        body = json.dumps({"c": self.control_url, "p": self.party_id, "n": self.party_name,
                           "s": self.secret}, separators=(",", ":"), sort_keys=True)
        return PREFIX + base64.urlsafe_b64encode(body.encode()).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Invite:
        text = text.strip()
        if not text.startswith(PREFIX) or len(text) > MAX_INVITE_CHARS:
            raise InviteError(f"not a LANrage invite (it starts with {PREFIX!r})")
        body = text[len(PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if not raw.lstrip().startswith(b"{"):
                raise ValueError("an invite is one JSON object")
            data = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError):
            raise InviteError("the invite is damaged: copy it again, in full") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k)
                                                  and len(data[k]) <= MAX_FIELD_CHARS
                                                  for k in ("c", "p", "n", "s")):
            raise InviteError("the invite is damaged: copy it again, in full")
        if not _PARTY_ID.fullmatch(data["p"]):
            raise InviteError("the invite names no usable party id")
        if not printable_name(data["n"]):
            raise InviteError("the invite's party name is not a short printable name")
        check_control_url(data["c"])
        return cls(control_url=data["c"], party_id=data["p"], party_name=data["n"], secret=data["s"])


def check_control_url(url: str) -> None:
    """Raise InviteError unless ``url`` is a usable ws://, wss:// or file:// control plane."""
    if url.startswith("file://"):
        try:
            parts = urlsplit(url)
        except ValueError:
            raise InviteError("the invite's discovery directory is not a file:// URL") from None
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/") or \
                ".." in path.split("/") or "\0" in path:
            raise InviteError("the invite's discovery directory must be an absolute path without ..")
        return
    if not url.startswith(("ws://", "wss://")):
        raise InviteError("the invite names no usable control server")
    try:
        ControlTarget.parse(url)
    except TargetError as error:
        raise InviteError(f"the invite names no usable control server: {error}") from None
