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
from events.streams import METRICS, NODE, PARTY, PEER, RELAY, node_of, node_prefix, node_stream, stream_kind

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
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceState:
    """A static device of the party: a plain WireGuard peer of member ``via_peer_id``."""

    device_id: str
    name: str
    public_key: str
    virtual_ip: str
    via_peer_id: str
    endpoint: str = ""  # on the router: where the device's config dials it
    applied: bool = False  # the last outcome of its WireGuard change
    error: str | None = None


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
    control_url: str = ""
    local_address: str | None = None  # the local virtual IP once it is on the interface
    local_address_error: str | None = None
    devices: tuple[tuple[str, DeviceState], ...] = ()

    @property
    def members_by_id(self) -> dict[str, MemberState]:
        return dict(self.members)

    @property
    def devices_by_id(self) -> dict[str, DeviceState]:
        return dict(self.devices)

    @property
    def address_owners(self) -> dict[str, str]:
        """peer or device id -> virtual IP: every address of the party that is taken."""
        owners = self.allocations
        owners.update((device_id, device.virtual_ip) for device_id, device in self.devices)
        return owners

    @property
    def allocations(self) -> dict[str, str]:
        """peer id -> virtual IP, the IPAM map of this party."""
        return {pid: m.virtual_ip for pid, m in self.members if m.virtual_ip}


def _set_member(state: PartyState, member: MemberState) -> PartyState:
    members = dict(state.members)
    members[member.peer_id] = member
    return _evolve(state, members=tuple(members.items()))


def _set_device(state: PartyState, device_id: str, **changes: Any) -> PartyState:
    if device_id not in state.devices_by_id:
        return state
    return _evolve(state, devices=tuple((d, _evolve(s, **changes) if d == device_id else s)
                                        for d, s in state.devices))


def apply_party(state: PartyState, event: Event) -> PartyState:
    match event:
        case ev.PartyCreated():
            return _evolve(state, party_id=event.party_id, name=event.name,
                           host_peer_id=event.host_peer_id, local_peer_id=event.host_peer_id,
                           subnet=event.subnet, active=True, left_reason=None,
                           control_url=event.control_url, local_address=None, local_address_error=None)
        case ev.PartyJoined():
            # An opening anew: the address is not on the interface until LocalAddressAssigned
            # says so (a failure of an earlier opening of this party is no answer to this one).
            return _evolve(state, party_id=event.party_id, name=event.name,
                           local_peer_id=event.local_peer_id, subnet=event.subnet,
                           active=True, left_reason=None, control_url=event.control_url,
                           local_address=None, local_address_error=None)
        case ev.PeerJoined():
            old = state.members_by_id.get(event.peer_id)
            return _set_member(state, MemberState(
                peer_id=event.peer_id, name=event.name, public_key=event.public_key,
                nat_type=event.nat_type, is_local=event.is_local,
                virtual_ip=old.virtual_ip if old else None, candidates=event.candidates))
        case ev.PeerUpdated():
            member = state.members_by_id.get(event.peer_id)
            if member is None:
                return state
            return _set_member(state, _evolve(member, name=event.name, nat_type=event.nat_type,
                                              candidates=event.candidates))
        case ev.LocalAddressAssigned():
            return _evolve(state, local_address=event.virtual_ip, local_address_error=None)
        case ev.LocalAddressFailed():
            return _evolve(state, local_address=None, local_address_error=event.error)
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
            return _evolve(state, active=False, left_reason=event.reason, devices=())
        case ev.StaticDeviceExported() | ev.StaticDeviceRouted():
            endpoint = event.endpoint if isinstance(event, ev.StaticDeviceExported) else ""
            device = DeviceState(device_id=event.device_id, name=event.name, public_key=event.public_key,
                                 virtual_ip=event.virtual_ip, via_peer_id=event.via_peer_id,
                                 endpoint=endpoint)
            return _evolve(state, devices=(*((d, s) for d, s in state.devices if d != event.device_id),
                                           (event.device_id, device)))
        case ev.StaticDeviceApplied():
            return _set_device(state, event.device_id, applied=True, error=None)
        case ev.StaticDeviceFailed():
            return _set_device(state, event.device_id, applied=False, error=event.error)
        case ev.StaticDeviceRemoved():
            return _evolve(state, devices=tuple((d, s) for d, s in state.devices if d != event.device_id))
    return state


@dataclass(frozen=True)
class DecisionInputs:
    """The last ``DecisionInputsRecorded``: what a connection's decisions read besides its
    transitions (see the event). A restart resumes from it, so it decides as it would have."""

    windows: tuple[tuple[str, str], ...] = ()
    lost_probes: float = 0.0
    slow_answers: int = 0
    slow_path: str | None = None
    recent_probes: str = ""
    retries: int = 0
    quality_switch_age_s: float | None = None
    relay_quality: tuple[str, float, int] | None = None
    offered_relay: str | None = None
    pending_offer: tuple[str, str | None] | None = None
    dead_session: str | None = None
    retry_run: str | None = None
    timers: tuple[tuple[str, float], ...] = ()
    written_at: float = 0.0


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
    # WireGuard: ``wireguard_configured`` and ``endpoint`` are what was decided (the last
    # request); ``wireguard_applied`` says whether the last outcome made WireGuard match it.
    wireguard_configured: bool = False
    wireguard_applied: bool = True
    wireguard_error: str | None = None
    candidates: tuple[str, ...] = ()
    remote_nat_type: str = ev.NAT_UNKNOWN
    allocating: str | None = None  # a relay asked for a session, no outcome yet
    session_relay: str | None = None  # the relay session this connection holds
    session_id: str | None = None
    session_endpoint: str | None = None
    punching: bool = False  # a punch was attempted and has no outcome yet
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
    # Not part of what the connection is (status, equality): what its next decisions read.
    inputs: DecisionInputs = field(default=DecisionInputs(), compare=False)


_UP = (ev.CONNECTED, ev.DEGRADED)
_INPUT_FIELDS = tuple(DecisionInputs.__dataclass_fields__)
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
            return _evolve(state, punches=state.punches + 1, punching=True)
        case ev.HolePunchSucceeded():
            return _evolve(state, punch_successes=state.punch_successes + 1, punching=False)
        case ev.HolePunchFailed():
            return _evolve(state, punching=False)
        case ev.WireGuardPeerConfigRequested():
            return _evolve(state, public_key=event.public_key, endpoint=event.endpoint,
                           wireguard_configured=True, wireguard_applied=False)
        case ev.WireGuardPeerRemovalRequested():
            return _evolve(state, wireguard_configured=False, wireguard_applied=False)
        case ev.WireGuardPeerConfigured():
            if event.decided_here:
                return _evolve(state, public_key=event.public_key, endpoint=event.endpoint,
                               wireguard_configured=True, wireguard_applied=True, wireguard_error=None)
            applied = state.wireguard_configured and state.endpoint == event.endpoint
            return _evolve(state, wireguard_applied=applied,
                           wireguard_error=None if applied else state.wireguard_error)
        case ev.WireGuardPeerRemoved():
            if event.decided_here:
                return _evolve(state, wireguard_configured=False, wireguard_applied=True,
                               wireguard_error=None)
            applied = not state.wireguard_configured
            return _evolve(state, wireguard_applied=applied,
                           wireguard_error=None if applied else state.wireguard_error)
        case ev.WireGuardPeerChangeFailed():
            return _evolve(state, wireguard_applied=False, wireguard_error=event.error)
        case ev.RemotePeerUpdated():
            return _evolve(state, party_id=event.party_id, peer_id=event.peer_id,
                           candidates=event.candidates, remote_nat_type=event.nat_type)
        case ev.RelayAllocationRequested():
            return _evolve(state, allocating=event.relay)
        case ev.RelaySessionOpened():
            return _evolve(state, allocating=None, session_relay=event.relay,
                           session_id=event.session_id, session_endpoint=event.endpoint)
        case ev.RelayAllocationFailed():
            return _evolve(state, allocating=None)
        case ev.RelaySessionReleased():
            if (event.relay, event.session_id) != (state.session_relay, state.session_id):
                return state
            return _evolve(state, session_relay=None, session_id=None, session_endpoint=None)
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
            if event.seen_by != ev.SEEN_BY_WIREGUARD:
                return state
            return _evolve(state, endpoint=event.new_endpoint)
        case ev.ReconnectAttempted():
            return _evolve(state, reconnects=event.attempt)
        case ev.PathSwitched():
            return _evolve(state, path=event.to_path,
                           endpoint=event.endpoint if event.endpoint is not None else state.endpoint,
                           relay=event.to_relay if event.to_path == ev.RELAY else None)
        case ev.DirectPathRetried():
            return _evolve(state, direct_retries=state.direct_retries + 1, punching=False)
        case ev.DecisionInputsRecorded():
            return _evolve(state, inputs=DecisionInputs(**{
                name: getattr(event, name) for name in _INPUT_FIELDS}))
        case ev.DirectPathRetriesRepeated():
            # Each counted retry was a punch too (its HolePunchAttempted counted, not written).
            return _evolve(state, direct_retries=state.direct_retries + event.count,
                           punches=state.punches + event.count, punching=False)
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
    selection: int = 0  # the number of this relay's last selection (0: none, or before numbering)


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
            return _evolve(state, relay=event.relay, selected=True, degraded=False, selection=event.selection)
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
    pending_requests: tuple[str, ...] = ()  # PartyRequested ids with no outcome yet
    abrupt_ends: int = 0  # previous runs that ended without a clean stop
    unreachable_controls: tuple[str, ...] = ()  # control planes this run cannot reach now
    port_mapping: str | None = None  # the gateway's mapping of the WireGuard port, "ip:port"
    port_mapping_protocol: str | None = None
    port_mapping_lifetime_s: int = 0
    port_mapping_problem: str | None = None  # why there is none (refused, lost), for status


def apply_node(state: NodeState, event: Event) -> NodeState:
    match event:
        case ev.NodeStarted():
            # A new run knows nothing yet of its control planes: it records what it finds.
            return _evolve(state, node_id=event.node_id, public_key=event.public_key,
                           listen_port=event.listen_port, running=True, unreachable_controls=(),
                           port_mapping=None, port_mapping_protocol=None, port_mapping_lifetime_s=0,
                           port_mapping_problem=None)
        case ev.NodeStopped():
            return _evolve(state, running=False)
        case ev.NodeAlive():
            # Written only by a running node: a replay that stops after it shows the node up.
            return state if state.running else _evolve(state, running=True)
        case ev.NodeRunEndedAbruptly():
            # Recorded by the next run as it starts, just before its NodeStarted: the downtime
            # is behind it, and ``apply_abrupt_end`` shows the node down during it.
            return _evolve(state, running=False, abrupt_ends=state.abrupt_ends + 1)
        case ev.NatDetected():
            endpoint = (f"{event.public_ip}:{event.public_port}"
                        if event.public_ip and event.public_port else None)
            return _evolve(state, nat_type=event.nat_type, public_endpoint=endpoint,
                           relay_only=False)
        case ev.NatDetectionFailed():
            return _evolve(state, nat_type=ev.NAT_UNKNOWN, public_endpoint=None, relay_only=True)
        case ev.PublicEndpointChanged():
            return _evolve(state, public_endpoint=event.new_endpoint)
        case ev.MessageRejected():
            return _evolve(state, rejected_messages=state.rejected_messages + 1)
        case ev.PortMappingObtained() | ev.PortMappingRenewed():
            return _evolve(state, port_mapping=f"{event.external_ip}:{event.external_port}",
                           port_mapping_protocol=event.protocol, port_mapping_lifetime_s=event.lifetime_s,
                           port_mapping_problem=None)
        case ev.PortMappingLost() | ev.PortMappingRefused():
            return _evolve(state, port_mapping=None, port_mapping_protocol=None, port_mapping_lifetime_s=0,
                           port_mapping_problem=event.reason)
        case ev.PortMappingReleased():
            return _evolve(state, port_mapping=None, port_mapping_protocol=None, port_mapping_lifetime_s=0)
        case ev.NodePartyOpened():
            return _evolve(state, parties=(*(p for p in state.parties if p != event.party_id),
                                           event.party_id),
                           pending_requests=tuple(r for r in state.pending_requests
                                                  if r != event.request_id))
        case ev.PartyRequested():
            return _evolve(state, pending_requests=(*state.pending_requests, event.request_id))
        case ev.PartyRequestFailed():
            return _evolve(state, pending_requests=tuple(r for r in state.pending_requests
                                                         if r != event.request_id))
        case ev.NodePartyClosed():
            return _evolve(state, parties=tuple(p for p in state.parties if p != event.party_id))
        case ev.ControlServerUnreachable():
            return _evolve(state, unreachable_controls=(
                *(url for url in state.unreachable_controls if url != event.control_url), event.control_url))
        case ev.ControlServerReachable():
            return _evolve(state, unreachable_controls=tuple(
                url for url in state.unreachable_controls if url != event.control_url))
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
    PARTY: ("parties", PartyState, apply_party),
    PEER: ("connections", ConnectionState, apply_connection),
    RELAY: ("relays", RelayState, apply_relay),
    NODE: ("nodes", NodeState, apply_node),
}


def apply_world(world: World, stream_id: str, event: Event, global_position: int = 0) -> World:
    """Fold one event of any stream into ``world`` (mutates the dicts, for speed in replay)."""
    kind = stream_kind(stream_id)
    if kind == METRICS:
        # A connection's samples have their own stream; they fold into the connection's state,
        # once the connection exists (a sample alone says nothing of its party or state).
        stream_id = PEER + stream_id[len(METRICS):]
        connection = world.connections.get(stream_id)
        if connection is not None:
            world.connections[stream_id] = apply_connection(connection, event)
        return _evolve(world, position=global_position) if global_position else world
    fold = _FOLDS.get(kind)
    if fold is not None:
        attribute, empty, apply = fold
        states = getattr(world, attribute)
        states[stream_id] = apply(states.get(stream_id) or empty(), event)
        if isinstance(event, ev.RelaySelected):
            # The selection lives in the chosen relay's stream; every other relay of the same
            # node is unselected, and that node (only) has a new selected relay.
            node_id = node_of(stream_id)
            for other, relay in world.relays.items():
                if other != stream_id and relay.selected and node_of(other) == node_id:
                    world.relays[other] = _evolve(relay, selected=False)
            node = world.nodes.get(node_stream(node_id)) if node_id is not None else None
            if node is not None:
                world.nodes[node_stream(node_id)] = _evolve(node, selected_relay=event.relay)
    return _evolve(world, position=global_position) if global_position else world


def apply_abrupt_end(world: World, event: ev.NodeRunEndedAbruptly) -> World:
    """The world during the downtime that ``event`` (recorded later, at the next start) reports.

    The node is down and each of its connections that was not closed shows as
    interrupted, from ``event.last_recorded_at`` until the next start. Replay applies
    it when it stops inside such a downtime (mutates the dicts, like ``apply_world``).
    """
    key = node_stream(event.node_id)
    world.nodes[key] = _evolve(world.nodes.get(key) or NodeState(node_id=event.node_id), running=False)
    reason = f"node run ended abruptly after {event.last_recorded_at}"
    prefix = node_prefix(PEER, event.node_id)
    for stream_id, connection in world.connections.items():
        if stream_id.startswith(prefix) and connection.state not in (None, ev.CLOSED, ev.FAILED):
            # The last sample described the connection before the end, not during the downtime.
            world.connections[stream_id] = _evolve(connection, state=ev.INTERRUPTED, reason=reason,
                                                   latency_ms=None, **_NO_FIGURES)
    return world


def fold_stream(apply, initial, events: Iterable[Event]):  # type: ignore[no-untyped-def]
    state = initial
    for event in events:
        state = apply(state, event)
    return state
