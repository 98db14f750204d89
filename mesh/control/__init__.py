"""The control plane: party registry and signalling (WebSocket server and client),
and the file-based discovery mode for a party on one machine or one LAN.

See docs/control.md for the protocol.
"""

from mesh.control.client import AsyncControlClient, Backoff, ControlClient, ControlError, ControlUnavailable
from mesh.control.identity import Identity, IdentityError, peer_id_for
from mesh.control.invite import Invite, InviteError
from mesh.control.server import ControlServer, EventLog, ServerConfig

__all__ = ["AsyncControlClient", "Backoff", "ControlClient", "ControlError", "ControlServer",
           "ControlUnavailable", "EventLog", "Identity", "IdentityError", "Invite", "InviteError",
           "ServerConfig", "peer_id_for"]
