"""Port mapping at the gateway (PCP, NAT-PMP, UPnP-IGD) for WireGuard's UDP port."""

from mesh.portmap.client import AUTO, MODES, NATPMP, OFF, PCP, UPNP, Mapping, PortMapper, default_gateway
from mesh.portmap.errors import PortMapError, PortMapRefused, PortMapUnanswered, PortMapWireError

__all__ = ["AUTO", "MODES", "NATPMP", "OFF", "PCP", "UPNP", "Mapping", "PortMapError", "PortMapRefused",
           "PortMapUnanswered", "PortMapWireError", "PortMapper", "default_gateway"]
