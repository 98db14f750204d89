"""Every message the actors exchange: typed, immutable, picklable.

Commands come from the node agent (HTTP API) and the control plane; observations
come from the network adapters; replies go back to whoever asked. Internal
messages (``*Init``, ``Forwarded``, ``ConnectionUpdate`` ...) travel between the
actors only. See docs/actors.md for the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.config import ActorConfig
from events.fold import ConnectionState, DeviceState

# ---------------------------------------------------------------- specs (picklable)


@dataclass(frozen=True)
class StoreSpec:
    """Where events go: any SQLAlchemy URL, or ``memory://NAME`` (one recorder per process)."""

    url: str


@dataclass(frozen=True)
class AdapterSpec:
    """How an actor builds its network adapters in its own process.

    ``factory`` is ``"package.module:function"``; it is called with ``kwargs`` and
    returns an object with ``wireguard``, ``prober``, ``puncher``, ``relay_client``
    and ``nat_detector`` attributes (the protocols of mesh/interfaces.py).
    """

    factory: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, factory: str, **kwargs: Any) -> AdapterSpec:
        return cls(factory, tuple(sorted(kwargs.items())))


@dataclass(frozen=True)
class LogSpec:
    level: str = "INFO"
    path: str | None = None  # None: stderr
    # The program already logs there itself (the agent, whose actors run in its own process):
    # the actors add no sink of their own, or every line would be printed twice.
    program_sinks: bool = False


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class StartNode:
    """The first message to the node actor (reply: NodeReady). Safe to send again.

    ``executor``: how the edge runs effects, ``"inline"`` (tests with simulated adapters)
    or the name of the ``actors.edge.IoWorkers`` the runtime registered.
    """

    node_id: str
    store: StoreSpec
    adapters: AdapterSpec
    relays: tuple[str, ...] = ()
    config: ActorConfig = field(default_factory=ActorConfig)
    log: LogSpec = field(default_factory=LogSpec)
    executor: str = "inline"


@dataclass(frozen=True)
class CreateParty:
    """Reply: PartyOpened, or CommandRejected."""

    party_id: str
    name: str
    local_peer_id: str
    local_name: str
    local_virtual_ip: str | None = None  # None: allocate locally
    subnet: str = "10.66.0.0/16"
    control_url: str = ""
    request_id: str = ""  # the PartyRequested this completes, if any


@dataclass(frozen=True)
class JoinParty:
    """Reply: PartyOpened, or CommandRejected. Members arrive as PeerAnnounced."""

    party_id: str
    name: str
    local_peer_id: str
    local_name: str
    local_virtual_ip: str | None = None  # as assigned by the control server
    control_url: str = ""
    subnet: str = "10.66.0.0/16"
    request_id: str = ""  # the PartyRequested this completes, if any


@dataclass(frozen=True)
class RequestParty:
    """Record the decision to ask a control plane for a party, before asking (reply: Recorded)."""

    request_id: str
    kind: str  # "create" or "join"
    control_url: str
    name: str = ""
    party_id: str = ""


@dataclass(frozen=True)
class FailPartyRequest:
    """Record that the control plane refused or never answered (reply: Recorded)."""

    request_id: str
    error: str


@dataclass(frozen=True)
class LeaveParty:
    """Reply: PartyClosed, or CommandRejected."""

    party_id: str
    reason: str = "left by the user"


@dataclass(frozen=True)
class ExportDevice:
    """Make a device without LANrage a static peer of this node in the party (reply:
    DeviceExported, or CommandRejected). Only its public key: the private key stays with
    whoever renders the device's config. ``endpoint``: where that config dials this node."""

    party_id: str
    name: str
    public_key: str
    endpoint: str


MAX_ANNOUNCED_DEVICES = 16  # per member: the control protocol's bound


@dataclass(frozen=True)
class StaticDeviceInfo:
    """A static device as its routing member announces it through the control plane."""

    device_id: str
    name: str
    public_key: str
    virtual_ip: str


@dataclass(frozen=True)
class PeerAnnounced:
    """The control plane says a remote peer is (still) in the party. No reply.

    ``devices``: the static devices that peer routes for (None: the control plane did not
    say, e.g. file discovery; the devices known through it stay).
    """

    party_id: str
    peer_id: str
    name: str
    public_key: str
    nat_type: str = "unknown"
    virtual_ip: str | None = None  # as assigned by the control server; None: allocate locally
    candidates: tuple[str, ...] = ()
    devices: tuple[StaticDeviceInfo, ...] | None = None


@dataclass(frozen=True)
class PeerDeparted:
    party_id: str
    peer_id: str
    reason: str = "left the party"


@dataclass(frozen=True)
class PeerAskedForRelay:
    """The peer asked the control plane for a relay session with this node (its relay offer
    arrived): its side of the path broke. This side checks its own path at once instead of
    waiting for its probes, so that both ends meet on the relay within seconds. ``relay``:
    the relay of the offered session (a side that is not up joins it there)."""

    party_id: str
    peer_id: str
    # The offered session and its relay: a side on another session of the pair moves to it
    # (the peer moved the pair: a failed session, another relay, a restart).
    session_id: str | None = None
    relay: str | None = None


@dataclass(frozen=True)
class PublicEndpointMoved:
    """The agent's STUN binding sees the WireGuard port at another public endpoint now."""

    new_endpoint: str
    reason: str
    stun_server: str = ""
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortMappingStep:
    """A step of the agent's port mapping at the gateway, for the node stream (reply: Recorded).

    ``kind`` is one of ``PORT_MAPPING_STEPS``; ``candidates`` (when not empty) are the
    node's candidates from now on, the mapped endpoint first."""

    kind: str
    protocol: str = ""
    gateway: str = ""
    external_ip: str = ""
    external_port: int = 0
    internal_port: int = 0
    lifetime_s: int = 0
    protocols: tuple[str, ...] = ()
    reason: str = ""
    by_router: bool = False
    error: str = ""
    candidates: tuple[str, ...] = ()


PORT_MAPPING_STEPS = ("requested", "obtained", "renewed", "lost", "refused", "released")


@dataclass(frozen=True)
class ControlReachability:
    """The agent's session with a control plane connected or lost it (told on each change).

    ``outage_s``: how long it was unreachable, when it answers again and the agent saw it go.
    """

    control_url: str
    reachable: bool
    error: str = ""
    outage_s: float | None = None


@dataclass(frozen=True)
class RemoteCandidates:
    """New endpoint candidates ("ip:port") of a remote peer, from signalling."""

    party_id: str
    peer_id: str
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class AccountItem:
    """One thing a member says it saw on its own side (unix times; ``ended_at`` None: still)."""

    kind: str
    started_at: float
    ended_at: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class PeerAccount:
    """A member's account of its own side, relayed by the control server, which names the sender."""

    party_id: str
    peer_id: str
    items: tuple[AccountItem, ...]
    said_by: str = "peer"  # or "control server": its own knowledge of the member (ACCOUNT_OFFLINE only)


@dataclass(frozen=True)
class StatusQuery:
    """Reply: NodeStatus."""


@dataclass(frozen=True)
class Ping:
    """Reply: Pong. Also lets a test's virtual clock deliver due wakeups."""


# ---------------------------------------------------------------- observations


@dataclass(frozen=True)
class LatencyObserved:
    latency_ms: float


@dataclass(frozen=True)
class ProbeFailed:
    reason: str = "probe timed out"


@dataclass(frozen=True)
class TrafficObserved:
    rx_bytes: int
    tx_bytes: int


Observation = LatencyObserved | ProbeFailed | TrafficObserved


@dataclass(frozen=True)
class Observations:
    """A batch of observations of one peer connection: one message, one append."""

    party_id: str
    peer_id: str
    items: tuple[Observation, ...]


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class NodeReady:
    node_id: str
    parties: tuple[str, ...]


@dataclass(frozen=True)
class PartyOpened:
    party_id: str
    local_peer_id: str
    virtual_ip: str


@dataclass(frozen=True)
class DeviceExported:
    party_id: str
    device_id: str
    name: str
    virtual_ip: str
    subnet: str
    router_public_key: str  # this node's: the device's one WireGuard peer
    router_name: str
    endpoint: str


@dataclass(frozen=True)
class PartyClosed:
    party_id: str
    reason: str


@dataclass(frozen=True)
class CommandRejected:
    command: str
    reason: str


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Recorded:
    """The command's facts are in the log."""


@dataclass(frozen=True)
class PeerStatus:
    peer_id: str
    name: str
    public_key: str
    virtual_ip: str | None
    is_local: bool
    connection: ConnectionState | None  # None for the local peer


@dataclass(frozen=True)
class PartyStatus:
    party_id: str
    name: str
    active: bool
    local_peer_id: str
    subnet: str
    peers: tuple[PeerStatus, ...]
    devices: tuple[DeviceState, ...] = ()  # the static devices, as the party actor holds them


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    relay: str | None
    parties: tuple[PartyStatus, ...]
    complete: bool = True  # False when a party did not answer within status_timeout_s


# ---------------------------------------------------------------- internal


@dataclass(frozen=True)
class Forwarded:
    """A command routed by the node to a party, with whom to answer."""

    command: Any
    reply_to: Any  # thespian ActorAddress


@dataclass(frozen=True)
class EdgeInit:
    adapters: AdapterSpec
    executor: str
    log: LogSpec


@dataclass(frozen=True)
class PartyInit:
    node_id: str
    party_id: str
    store: StoreSpec
    edge: Any  # the edge actor's address
    public_key: str  # this node's WireGuard key
    config: ActorConfig
    log: LogSpec
    relay: str | None  # the node's selected relay (derived from the relay streams)
    local_nat_type: str = "unknown"  # the node's last NatDetected
    local_candidates: tuple[str, ...] = ()
    restarted: str | None = None  # why the previous incarnation ended, when it crashed


@dataclass(frozen=True)
class PeerInit:
    node_id: str
    party_id: str
    peer_id: str
    local_peer_id: str
    public_key: str
    virtual_ip: str
    candidates: tuple[str, ...]  # as the party knows them (the connection records changes)
    store: StoreSpec
    edge: Any
    config: ActorConfig
    log: LogSpec
    relay: str | None
    # Set when a crashed connection is recreated only to be closed (its peer or the party
    # left while it awaited its restart): it replays, then closes, without reconnecting.
    close_reason: str | None = None
    local_nat_type: str = "unknown"
    remote_nat_type: str = "unknown"  # as the peer announced it
    local_candidates: tuple[str, ...] = ()
    restarted: str | None = None


@dataclass(frozen=True)
class RelayMonitorInit:
    node_id: str
    relays: tuple[str, ...]
    store: StoreSpec
    edge: Any
    config: ActorConfig
    log: LogSpec


@dataclass(frozen=True)
class RelayChanged:
    relay: str | None
    rtt_ms: float | None
    previous: str | None


@dataclass(frozen=True)
class RelaySuspected:
    """A connection on ``relay`` found its path dead: the relay monitor probes that relay at
    once and, if it does not answer, declares it dead on its own evidence (a connection's
    silence alone may be its peer's, not the relay's)."""

    relay: str
    reason: str


@dataclass(frozen=True)
class RelaysReachable:
    """Every relay was silent and one answers again (this node's uplink is back, most likely)."""


@dataclass(frozen=True)
class ControlServerBack:
    """A control server that was unreachable answers again: relay tickets and the peers'
    announcements flow again, so connections still trying to reach their peers try now."""


@dataclass(frozen=True)
class RelayQuality:
    """The selected relay's last record window, as this node's monitor measured it: what a
    lossy direct path compares itself with before it moves to the relay."""

    relay: str
    rtt_ms: float | None
    loss: float
    probes: int  # in the window: a handful says little


@dataclass(frozen=True)
class ConnectionUpdate:
    """A peer connection's state after each persisted batch, for its party's status cache."""

    peer_id: str
    state: ConnectionState


@dataclass(frozen=True)
class ClosePeer:
    reason: str


@dataclass(frozen=True)
class PeerClosed:
    peer_id: str


@dataclass(frozen=True)
class PartyStatusQuery:
    request_id: int


@dataclass(frozen=True)
class PartyStatusReply:
    request_id: int
    status: PartyStatus


@dataclass(frozen=True)
class Timer:
    """Payload of every wakeupAfter: stale generations and incarnations are ignored."""

    kind: str
    generation: int
    incarnation: str
    target: str = ""  # the child a restart timer is for


@dataclass(frozen=True)
class ChildrenQuery:
    """Diagnostics (tests, tools): reply ChildAddresses."""


@dataclass(frozen=True)
class ChildAddresses:
    children: tuple[tuple[str, Any], ...]  # (name, thespian ActorAddress)
