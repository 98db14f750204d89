"""What can go wrong with a WireGuard interface; every message is for the user."""

from __future__ import annotations

from mesh.endpoints import InvalidEndpointError
from mesh.interfaces import MeshError
from mesh.keys import InvalidKeyError


class WireGuardError(MeshError):
    """A WireGuard operation failed."""



class InvalidConfigError(WireGuardError):
    """A bad interface name, address, MTU, port or allowed IP."""


class InterfaceExistsError(WireGuardError):
    """The interface name is taken (by a link here or a WireGuard socket anywhere)."""


class InterfaceNotFoundError(WireGuardError):
    """The interface vanished (e.g. wireguard-go was killed)."""


class PortInUseError(WireGuardError):
    """The listen port is taken by another socket."""


class WireGuardGoMissingError(WireGuardError):
    """No kernel WireGuard and no ``wireguard-go`` binary."""


class NotRootError(WireGuardError):
    """Creating interfaces needs root (CAP_NET_ADMIN)."""


__all__ = ["InterfaceExistsError", "InterfaceNotFoundError", "InvalidConfigError", "InvalidEndpointError",
           "InvalidKeyError", "NotRootError", "PortInUseError", "WireGuardError",
           "WireGuardGoMissingError"]
