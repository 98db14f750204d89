"""The UDP relay: wire protocol, tickets, server and client (see docs/nat-relay.md)."""

from typing import Any

from mesh.relay.client import ProxyRelayClient, RelayProxy, RelayRefused, probe_relay
from mesh.relay.tickets import RelayTicket, issue_tickets

__all__ = ["ProxyRelayClient", "RelayConfig", "RelayProxy", "RelayRefused", "RelayServer", "RelayTicket",
           "issue_tickets", "probe_relay"]


# The server is loaded when it is used: a node that only uses relays never pays for it.
_SERVER = {"RelayConfig", "RelayServer"}


def __getattr__(name: str) -> Any:
    if name not in _SERVER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from mesh.relay import server

    return getattr(server, name)
