"""Pure folds: ``apply(state, event) -> state`` for every aggregate.

The live actors and the replay tool use exactly these functions, so replaying a
log reproduces the state any actor had at any point. States are frozen; every
apply returns a new value and never mutates its input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from events import types as ev
from events.base import Event
from events.streams import stream_kind

S = TypeVar("S")


def _evolve(instance: S, /, **changes: Any) -> S:
    """``dataclasses.replace`` without re-running ``__init__``: the fold's hot path.

    The states are frozen dataclasses with no validation in ``__init__``, so copying
    the instance dictionary gives the same value at a fraction of the cost.
    """
    new = object.__new__(type(instance))
    values = new.__dict__
    values.update(instance.__dict__)
    values.update(changes)
    return new


@dataclass(frozen=True)
class MemberState:
    peer_id: str
    name: str
    public_key: str
    nat_type: str = ev.NAT_UNKNOWN
    virtual_ip: str | None = None
    is_local: bool = False


@dataclass(frozen=True)
class PartyState:
    party_id: str = ""
    name: str = ""
    host_peer_id: str = ""
    local_peer_id: str = ""
    subnet: str = "10.66.0.0/16"
    members: tuple[tuple[str, MemberState], ...] = ()
    active: bool = False
    left_reason: str | None = None

    @property
    def members_by_id(self) -> dict[str, MemberState]:
        return dict(self.members)

    @property
    def allocations(self) -> dict[str, str]:
        """peer id -> virtual IP, the IPAM map of this party."""
        return {pid: m.virtual_ip for pid, m in self.members if m.virtual_ip}


def _set_member(state: PartyState, member: MemberState) -> PartyState:
    members = dict(state.members)
    members[member.peer_id] = member
    return _evolve(state, members=tuple(members.items()))


def apply_party(state: PartyState, event: Event) -> PartyState:
    match event:
        case ev.PartyCreated():
            return _evolve(state, party_id=event.party_id, name=event.name,
                           host_peer_id=event.host_peer_id, local_peer_id=event.host_peer_id,
                           subnet=event.subnet, active=True, left_reason=None)
        case ev.PartyJoined():
            return _evolve(state, party_id=event.party_id, name=event.name,
                           local_peer_id=event.local_peer_id, subnet=event.subnet,
                           active=True, left_reason=None)
        case ev.PeerJoined():
            old = state.members_by_id.get(event.peer_id)
            return _set_member(state, MemberState(
                peer_id=event.peer_id, name=event.name, public_key=event.public_key,
                nat_type=event.nat_type, is_local=event.is_local,
                virtual_ip=old.virtual_ip if old else None))
        case ev.VirtualIpAllocated():
            member = state.members_by_id.get(event.peer_id) or MemberState(
                peer_id=event.peer_id, name="", public_key="")
            return _set_member(state, _evolve(member, virtual_ip=event.virtual_ip))
        case ev.VirtualIpReleased():
            member = state.members_by_id.get(event.peer_id)
            if member is None:
                return state
            return _set_member(state, _evolve(member, virtual_ip=None))
        case ev.PeerLeft():
            return _evolve(state, members=tuple(
                (pid, m) for pid, m in state.members if pid != event.peer_id))
        case ev.PartyLeft():
            return _evolve(state, active=False, left_reason=event.reason)
    return state


@dataclass(frozen=True)
class ConnectionState:
    party_id: str = ""
    peer_id: str = ""
    state: str | None = None
    reason: str = ""
    path: str | None = None
    endpoint: str | None = None
    relay: str | None = None
    public_key: str | None = None
    wireguard_configured: bool = False
    attempt: int = 0
    reconnects: int = 0
    latency_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    quality: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    punches: int = 0
    punch_successes: int = 0
    direct_retries: int = 0


_UP = (ev.CONNECTED, ev.DEGRADED)
_NO_FIGURES: dict[str, Any] = {"jitter_ms": None, "loss": None, "quality": None}


def apply_connection(state: ConnectionState, event: Event) -> ConnectionState:
    match event:
        # The most frequent event in a long-lived log comes first.
        case ev.MetricsSampled():
            return _evolve(state, latency_ms=event.latency_ms, jitter_ms=event.jitter_ms,
                           loss=event.loss, quality=event.quality,
                           rx_bytes=event.rx_bytes, tx_bytes=event.tx_bytes)
        case ev.ConnectionAttemptStarted():
            return _evolve(state, party_id=event.party_id, peer_id=event.peer_id,
                           attempt=event.attempt, path=event.path)
        case ev.PathChosen():
            return _evolve(state, party_id=event.party_id, peer_id=event.peer_id,
                           path=event.path, endpoint=event.endpoint, relay=event.relay)
        case ev.HolePunchAttempted():
            return _evolve(state, punches=state.punches + 1)
        case ev.HolePunchSucceeded():
            return _evolve(state, punch_successes=state.punch_successes + 1)
        case ev.WireGuardPeerConfigured():
            return _evolve(state, public_key=event.public_key, endpoint=event.endpoint,
                           wireguard_configured=True)
        case ev.WireGuardPeerRemoved():
            return _evolve(state, wireguard_configured=False)
        case ev.ConnectionStateChanged():
            # Going down or coming back, the last sample no longer describes the connection:
            # "connected, 20 ms, loss 100 %" would mix the first probe with the drop's sample.
            stale = event.to_state not in _UP or state.state not in _UP
            return _evolve(state, party_id=event.party_id, peer_id=event.peer_id,
                           state=event.to_state, reason=event.reason,
                           path=event.path if event.path is not None else state.path,
                           endpoint=event.endpoint if event.endpoint is not None else state.endpoint,
                           relay=event.relay if event.path == ev.RELAY else
                           (None if event.path == ev.DIRECT else state.relay),
                           latency_ms=event.latency_ms if event.latency_ms is not None
                           else None if stale else state.latency_ms,
                           **(_NO_FIGURES if stale else {}))
        case ev.EndpointChanged():
            return _evolve(state, endpoint=event.new_endpoint)
        case ev.ReconnectAttempted():
            return _evolve(state, reconnects=event.attempt)
        case ev.PathSwitched():
            return _evolve(state, path=event.to_path,
                           endpoint=event.endpoint if event.endpoint is not None else state.endpoint,
                           relay=event.to_relay if event.to_path == ev.RELAY else None)
        case ev.DirectPathRetried():
            return _evolve(state, direct_retries=state.direct_retries + 1)
    return state


@dataclass(frozen=True)
class RelayState:
    relay: str = ""
    rtt_ms: float | None = None
    probes: int = 0
    answered: int = 0
    degraded: bool = False
    selected: bool = False
    sessions: tuple[str, ...] = ()
    forwarded_packets: int = 0
    running: bool = False


def apply_relay(state: RelayState, event: Event) -> RelayState:
    match event:
        case ev.RelayProbed():
            return _evolve(state, relay=event.relay, rtt_ms=event.rtt_ms,
                           probes=state.probes + event.probes,
                           answered=state.answered + event.answered,
                           degraded=event.answered == 0 and state.degraded)
        case ev.RelayDegraded():
            return _evolve(state, relay=event.relay, degraded=True)
        case ev.RelaySelected():
            return _evolve(state, relay=event.relay, selected=True, degraded=False)
        case ev.RelaySessionAllocated():
            return _evolve(state, relay=event.relay, sessions=(*state.sessions, event.session_id))
        case ev.RelaySessionExpired():
            return _evolve(state, sessions=tuple(s for s in state.sessions if s != event.session_id))
        case ev.RelayCountersSampled():
            return _evolve(state, forwarded_packets=state.forwarded_packets + event.forwarded_packets)
        case ev.RelayServerStarted():
            return _evolve(state, relay=event.relay, running=True)
        case ev.RelayServerStopped():
            return _evolve(state, running=False)
    return state


@dataclass(frozen=True)
class NodeState:
    node_id: str = ""
    public_key: str = ""
    listen_port: int = 0
    running: bool = False
    nat_type: str = ev.NAT_UNKNOWN
    public_endpoint: str | None = None
    relay_only: bool = False
    selected_relay: str | None = None  # kept by apply_world from the relay streams
    rejected_messages: int = 0
    parties: tuple[str, ...] = ()


def apply_node(state: NodeState, event: Event) -> NodeState:
    match event:
        case ev.NodeStarted():
            return _evolve(state, node_id=event.node_id, public_key=event.public_key,
                           listen_port=event.listen_port, running=True)
        case ev.NodeStopped():
            return _evolve(state, running=False)
        case ev.NatDetected():
            endpoint = (f"{event.public_ip}:{event.public_port}"
                        if event.public_ip and event.public_port else None)
            return _evolve(state, nat_type=event.nat_type, public_endpoint=endpoint,
                           relay_only=False)
        case ev.NatDetectionFailed():
            return _evolve(state, nat_type=ev.NAT_UNKNOWN, public_endpoint=None, relay_only=True)
        case ev.MessageRejected():
            return _evolve(state, rejected_messages=state.rejected_messages + 1)
        case ev.NodePartyOpened():
            return _evolve(state, parties=(*(p for p in state.parties if p != event.party_id),
                                           event.party_id))
        case ev.NodePartyClosed():
            return _evolve(state, parties=tuple(p for p in state.parties if p != event.party_id))
    return state


@dataclass(frozen=True)
class World:
    """The state of every stream in a log, as the replay tool shows it."""

    parties: dict[str, PartyState] = field(default_factory=dict)
    connections: dict[str, ConnectionState] = field(default_factory=dict)
    relays: dict[str, RelayState] = field(default_factory=dict)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    position: int = 0


_FOLDS = {
    "party": ("parties", PartyState, apply_party),
    "peer": ("connections", ConnectionState, apply_connection),
    "relay": ("relays", RelayState, apply_relay),
    "node": ("nodes", NodeState, apply_node),
}


def apply_world(world: World, stream_id: str, event: Event, global_position: int = 0) -> World:
    """Fold one event of any stream into ``world`` (mutates the dicts, for speed in replay)."""
    fold = _FOLDS.get(stream_kind(stream_id))
    if fold is not None:
        attribute, empty, apply = fold
        states = getattr(world, attribute)
        states[stream_id] = apply(states.get(stream_id) or empty(), event)
        if isinstance(event, ev.RelaySelected):
            # The selection lives in the chosen relay's stream; every other relay is unselected.
            for other, relay in world.relays.items():
                if other != stream_id and relay.selected:
                    world.relays[other] = _evolve(relay, selected=False)
            # One node writes to one database, so its node stream is the only one here.
            for node_stream_id, node in world.nodes.items():
                world.nodes[node_stream_id] = _evolve(node, selected_relay=event.relay)
    return _evolve(world, position=global_position) if global_position else world


def fold_stream(apply, initial, events: Iterable[Event]):  # type: ignore[no-untyped-def]
    state = initial
    for event in events:
        state = apply(state, event)
    return state
