"""Stream id conventions (docs/architecture.md, "The `events` table")."""

from __future__ import annotations


def node_stream(node_id: str) -> str:
    return f"node:{node_id}"


def party_stream(party_id: str) -> str:
    return f"party:{party_id}"


def peer_stream(party_id: str, peer_id: str) -> str:
    return f"peer:{party_id}:{peer_id}"


def relay_stream(relay: str) -> str:
    return f"relay:{relay}"


def control_stream(server_id: str) -> str:
    return f"control:{server_id}"


def stream_kind(stream_id: str) -> str:
    return stream_id.split(":", 1)[0]
