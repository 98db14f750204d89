"""Stream id conventions of DESIGN.md."""

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


def peer_stream_ids(stream_id: str) -> tuple[str, str] | None:
    """``(party_id, peer_id)`` of a peer stream (its last two parts), or None for any other stream."""
    if stream_kind(stream_id) != "peer":
        return None
    parts = stream_id.split(":")
    if len(parts) < 3 or not parts[-1] or not parts[-2]:
        return None
    return parts[-2], parts[-1]
