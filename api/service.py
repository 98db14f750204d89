"""What the API needs of the node agent to change things (reads come from the store)."""

from __future__ import annotations

from typing import Any, Protocol


class ServiceError(Exception):
    """A refused command: ``status`` is the HTTP status, ``message`` one line for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NodeService(Protocol):
    async def create_party(self, name: str) -> dict[str, Any]:
        """Returns party_id, name, invite, virtual_ip, local_peer_id."""
        ...

    async def join_party(self, invite: str) -> dict[str, Any]:
        """Returns party_id, name, virtual_ip, local_peer_id."""
        ...

    async def leave_party(self, party_id: str | None) -> dict[str, Any]:
        """Returns party_id and reason. ``None``: the only active party."""
        ...

    async def export_device(self, name: str, party_id: str | None, endpoint: str | None) -> dict[str, Any]:
        """Returns party_id, device_id, name, virtual_ip, endpoint and config (the wg-quick file)."""
        ...

    def info(self) -> dict[str, Any]:
        """Cheap facts about the agent: node_id, control (url, connected), version."""
        ...

    async def live_connections(self) -> list[dict[str, Any]]:
        """Every peer connection as its actor holds it now (``events.fold.ConnectionState`` fields)."""
        ...
