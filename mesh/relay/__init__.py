"""The UDP relay: wire protocol, tickets, server and client (see docs/nat-relay.md)."""

from mesh.relay.client import ProxyRelayClient, RelayProxy, RelayRefused, probe_relay
from mesh.relay.server import RelayConfig, RelayServer
from mesh.relay.tickets import RelayTicket, issue_tickets

__all__ = ["ProxyRelayClient", "RelayConfig", "RelayProxy", "RelayRefused", "RelayServer", "RelayTicket",
           "issue_tickets", "probe_relay"]
