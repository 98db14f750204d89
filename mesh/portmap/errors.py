"""What can go wrong asking a gateway for a port mapping."""

from __future__ import annotations

from mesh.interfaces import MeshError


class PortMapError(MeshError):
    """A port mapping could not be had; the message says from which protocol and why."""


class PortMapWireError(PortMapError):
    """A reply that is not a well-formed answer to our request (ignored, like silence)."""


class PortMapRefused(PortMapError):
    """The gateway answered and said no (its result code is in ``code``)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class PortMapUnanswered(PortMapError):
    """No well-formed reply came in time."""
