"""The invite: one copyable string that carries where to join and the party secret.

Format: ``lanrage1-`` followed by the unpadded base64url of a small JSON object
``{"c": control_url, "p": party_id, "n": party_name, "s": secret}``. The control URL
is ``ws://host:port`` (or ``wss://``) for a control server, or ``file:///dir`` for
the local file-based discovery mode. The secret is only ever in the invite and in
the join request; the server stores a salted hash of it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

PREFIX = "lanrage1-"
MAX_INVITE_CHARS = 2048


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
            data = json.loads(raw)
        except (binascii.Error, ValueError):
            raise InviteError("the invite is damaged: copy it again, in full") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k)
                                                  for k in ("c", "p", "n", "s")):
            raise InviteError("the invite is damaged: copy it again, in full")
        if not data["c"].startswith(("ws://", "wss://", "file://")):
            raise InviteError("the invite names no usable control server")
        return cls(control_url=data["c"], party_id=data["p"], party_name=data["n"], secret=data["s"])
