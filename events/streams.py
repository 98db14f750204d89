"""Stream id conventions of DESIGN.md: unique across nodes, so many nodes can share one database.

A node's own streams carry its node id right after the kind
(``peer:<node_id>:<party_id>:<peer_id>``); the servers' streams carry the server's
name instead (``relay-server:<name>``, ``control:<server_id>``), since a server
is not a node. ``parse_stream_id`` is the one place that reads an id back.
"""

from __future__ import annotations

from typing import NamedTuple

NODE = "node"
AGENT = "agent"
PARTY = "party"
PEER = "peer"
METRICS = "metrics"
RELAY = "relay"
RELAY_SERVER = "relay-server"
CONTROL = "control"

# Kinds whose second field is the node id, and how many ':'-separated fields follow it
# (None: the rest is one field that may itself hold ':', such as a relay's host:port).
_NODE_KINDS: dict[str, int | None] = {NODE: 0, AGENT: 0, PARTY: 1, PEER: 2, METRICS: 2, RELAY: None}
_SERVER_KINDS = (RELAY_SERVER, CONTROL)


class StreamIdError(ValueError):
    """A stream id that does not have the shape of its kind."""


class StreamId(NamedTuple):
    kind: str
    node_id: str | None  # None for the servers' streams
    rest: str  # party id, party:peer, the relay's host:port, the server's name; "" for node streams


def node_stream(node_id: str) -> str:
    return f"{NODE}:{node_id}"


def party_stream(node_id: str, party_id: str) -> str:
    return f"{PARTY}:{node_id}:{party_id}"


def peer_stream(node_id: str, party_id: str, peer_id: str) -> str:
    return f"{PEER}:{node_id}:{party_id}:{peer_id}"


def metrics_stream(node_id: str, party_id: str, peer_id: str) -> str:
    """One peer connection's metric samples, kept apart from its transitions (retention prunes them)."""
    return f"{METRICS}:{node_id}:{party_id}:{peer_id}"


def relay_stream(node_id: str, relay: str) -> str:
    """What one node's relay monitor learns about one relay (``host:port``)."""
    return f"{RELAY}:{node_id}:{relay}"


def relay_server_stream(name: str) -> str:
    """The relay server's own log (sessions, counters), named by its listen address or name."""
    return f"{RELAY_SERVER}:{name}"


def control_stream(server_id: str) -> str:
    return f"{CONTROL}:{server_id}"


def node_prefix(kind: str, node_id: str) -> str:
    """The prefix every stream of ``kind`` written by ``node_id`` starts with."""
    return f"{kind}:{node_id}" if _NODE_KINDS.get(kind) == 0 else f"{kind}:{node_id}:"


def stream_kind(stream_id: str) -> str:
    return stream_id.split(":", 1)[0]


def parse_stream_id(stream_id: str) -> StreamId:
    """Kind, node id and the rest of a stream id; StreamIdError names an id that does not fit."""
    kind, colon, tail = stream_id.partition(":")
    if not colon or not kind or not tail:
        raise StreamIdError(f"stream id {stream_id!r} is not KIND:...")
    if kind in _SERVER_KINDS:
        return StreamId(kind, None, tail)
    if kind not in _NODE_KINDS:
        raise StreamIdError(f"stream id {stream_id!r} has an unknown kind {kind!r}")
    fields = _NODE_KINDS[kind]
    if fields == 0:
        return StreamId(kind, tail, "")
    node_id, colon, rest = tail.partition(":")
    parts = rest.split(":")
    if not node_id or not colon or not rest or (fields is not None and (
            len(parts) != fields or not all(parts))):
        shape = {PARTY: "party:NODE:PARTY", PEER: "peer:NODE:PARTY:PEER",
                 METRICS: "metrics:NODE:PARTY:PEER", RELAY: "relay:NODE:HOST:PORT"}[kind]
        raise StreamIdError(f"stream id {stream_id!r} is not {shape}")
    return StreamId(kind, node_id, rest)


def node_of(stream_id: str) -> str | None:
    """The node that wrote the stream, None for a server's stream or an id of no known shape."""
    try:
        return parse_stream_id(stream_id).node_id
    except StreamIdError:
        return None


def peer_stream_ids(stream_id: str) -> tuple[str, str] | None:
    """``(party_id, peer_id)`` of a peer stream (its last two parts), or None for any other stream."""
    if stream_kind(stream_id) != "peer":
        return None
    parts = stream_id.split(":")
    if len(parts) < 3 or not parts[-1] or not parts[-2]:
        return None
    return parts[-2], parts[-1]
