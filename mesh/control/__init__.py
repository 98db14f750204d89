"""The control plane: party registry and signalling (WebSocket server and client),
and the file-based discovery mode for a party on one machine or one LAN.

See docs/control.md for the protocol.
"""

from typing import Any

from mesh.control.client import AsyncControlClient, Backoff, ControlClient, ControlError, ControlUnavailable
from mesh.control.identity import Identity, IdentityError, peer_id_for
from mesh.control.invite import Invite, InviteError

# The server is loaded when it is used: a node that only dials a control server never pays
# for it (its import pulls the registry, the server's websockets side and the relay wire).
_SERVER = {"ControlServer", "EventLog", "ServerConfig"}


def __getattr__(name: str) -> Any:
    if name not in _SERVER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from mesh.control import server

    return getattr(server, name)


__all__ = ["AsyncControlClient", "Backoff", "ControlClient", "ControlError", "ControlServer",
           "ControlUnavailable", "EventLog", "Identity", "IdentityError", "Invite", "InviteError",
           "ServerConfig", "peer_id_for"]
