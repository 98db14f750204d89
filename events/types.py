"""Every event LANrage records, grouped by the stream they belong to.

Stream ids (see ``streams``): ``node:<node_id>``, ``party:<node_id>:<party_id>``,
``peer:<node_id>:<party_id>:<peer_id>``, ``metrics:<node_id>:<party_id>:<peer_id>``,
``relay:<node_id>:<host:port>``, ``relay-server:<name>``, ``control:<server_id>``.
Fields hold only JSON scalars and tuples; no secret ever goes into an event.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.base import Event, Payload, register, upcaster

# Connection states of the seed's state machine.
CONNECTING = "connecting"
CONNECTED = "connected"
DEGRADED = "degraded"
FAILED = "failed"
CLEANUP = "cleanup"
CLOSED = "closed"
CONNECTION_STATES = (CONNECTING, CONNECTED, DEGRADED, FAILED, CLEANUP, CLOSED)
# Only replay shows it, never an actor: the node's run ended abruptly while the connection was up.
INTERRUPTED = "interrupted"

# Paths a connection can take.
DIRECT = "direct"
RELAY = "relay"
PATHS = (DIRECT, RELAY)

# NAT types as pystun3 names them, normalised.
NAT_OPEN = "open"
NAT_FULL_CONE = "full_cone"
NAT_RESTRICTED = "restricted"
NAT_PORT_RESTRICTED = "port_restricted"
NAT_SYMMETRIC = "symmetric"
NAT_UDP_BLOCKED = "udp_blocked"
NAT_UNKNOWN = "unknown"
NAT_TYPES = (NAT_OPEN, NAT_FULL_CONE, NAT_RESTRICTED, NAT_PORT_RESTRICTED, NAT_SYMMETRIC,
             NAT_UDP_BLOCKED, NAT_UNKNOWN)


# ---------------------------------------------------------------- node stream


@register
@dataclass(frozen=True, kw_only=True)
class NodeStarted(Event):
    node_id: str
    public_key: str
    listen_port: int
    software_version: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class NodeStopped(Event):
    node_id: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class NodeRunEndedAbruptly(Event):
    """Recorded at start when the previous run left no ``NodeStopped``: it crashed or was killed.

    ``last_recorded_at`` (ISO 8601, UTC) and ``last_global_position`` are the last event any
    actor of this node wrote before the end: replay shows the node down from that moment.
    """

    node_id: str
    last_global_position: int
    last_recorded_at: str
    reason: str = "the previous run ended without a clean stop"


@register
@dataclass(frozen=True, kw_only=True)
class NatDetected(Event):
    """v2 split v1's ``mapping`` ("ip:port") into ``public_ip`` and ``public_port``."""

    version = 2
    node_id: str
    nat_type: str
    public_ip: str | None
    public_port: int | None
    local_ip: str = ""
    local_port: int = 0
    stun_server: str = ""


@upcaster("NatDetected", 1)
def _nat_detected_v1_to_v2(payload: Payload) -> Payload:
    mapping = payload.pop("mapping", None)
    host, _, port = (mapping or "").rpartition(":")
    payload["public_ip"] = host or None
    payload["public_port"] = int(port) if port.isdigit() else None
    return payload


@register
@dataclass(frozen=True, kw_only=True)
class NatDetectionFailed(Event):
    """No STUN server answered: the node runs in relay-only mode."""

    node_id: str
    reason: str
    stun_servers: tuple[str, ...] = ()


@register
@dataclass(frozen=True, kw_only=True)
class PublicEndpointChanged(Event):
    """The WireGuard port's public mapping moved while the node ran (a NAT rebinding, a
    router reboot, a new uplink): a STUN binding now sees ``new_endpoint``. The node
    announces its new candidates and says HELLO to its relays again from their new
    mappings."""

    node_id: str
    old_endpoint: str | None
    new_endpoint: str
    reason: str  # what made the node look again
    stun_server: str = ""


# Port-mapping protocols, as ``--port-mapping`` names them.
PORT_MAPPING_PCP = "pcp"
PORT_MAPPING_NATPMP = "natpmp"
PORT_MAPPING_UPNP = "upnp"
PORT_MAPPING_PROTOCOLS = (PORT_MAPPING_PCP, PORT_MAPPING_NATPMP, PORT_MAPPING_UPNP)


@register
@dataclass(frozen=True, kw_only=True)
class PortMappingRequested(Event):
    """The decision to ask the gateway for a mapping of WireGuard's UDP port, before asking.

    ``protocols`` are those the node will try, in order. Its outcome is
    ``PortMappingObtained`` or ``PortMappingRefused``. Renewals are not requested again:
    each is a ``PortMappingRenewed`` or a ``PortMappingLost``."""

    node_id: str
    gateway: str
    protocols: tuple[str, ...]
    internal_port: int
    lifetime_s: int
    reason: str  # "start", or why it is asked again


@register
@dataclass(frozen=True, kw_only=True)
class PortMappingObtained(Event):
    """The gateway maps ``external_ip:external_port`` (UDP) to WireGuard's port for ``lifetime_s``;
    the node offers that endpoint to its peers as a candidate of its own (mapped) kind."""

    node_id: str
    protocol: str
    gateway: str
    external_ip: str
    external_port: int
    internal_port: int
    lifetime_s: int


@register
@dataclass(frozen=True, kw_only=True)
class PortMappingRenewed(Event):
    node_id: str
    protocol: str
    external_ip: str
    external_port: int
    lifetime_s: int


@register
@dataclass(frozen=True, kw_only=True)
class PortMappingLost(Event):
    """The mapping is gone: a renewal was refused or unanswered, or the gateway moved it.

    ``by_router`` is true when the router itself took it back (it refused the renewal,
    answered with another endpoint, or forgot it in a restart), false when it stopped
    answering."""

    node_id: str
    protocol: str
    external_ip: str
    external_port: int
    reason: str
    by_router: bool


@register
@dataclass(frozen=True, kw_only=True)
class PortMappingRefused(Event):
    """No protocol gave a mapping: ``reason`` holds each one's answer (or silence)."""

    node_id: str
    gateway: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class PortMappingReleased(Event):
    """The node deleted its mapping at the gateway on a clean stop (``error`` if the gateway
    did not confirm it: the mapping then ends with its lifetime)."""

    node_id: str
    protocol: str
    external_ip: str
    external_port: int
    error: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class MessageRejected(Event):
    """An actor refused a message or an adapter observation it could not use."""

    actor: str
    message_type: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class NodePartyOpened(Event):
    """The node started hosting a party (its party actor); replayed to recreate it on restart.

    Appended in one transaction with the party's first events (``request_id`` names the
    ``PartyRequested`` it completes; empty when the party was opened without a control plane).
    """

    node_id: str
    party_id: str
    request_id: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class PartyRequested(Event):
    """The decision to ask a control plane for a party (``kind``: create or join), before asking.

    Its outcome is ``NodePartyOpened`` with the same ``request_id``, or ``PartyRequestFailed``.
    """

    node_id: str
    request_id: str
    kind: str
    control_url: str
    name: str = ""
    party_id: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class PartyRequestFailed(Event):
    node_id: str
    request_id: str
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class ActorRestarted(Event):
    """An actor was recreated after its previous incarnation crashed; recorded in its own stream."""

    actor: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class NodePartyClosed(Event):
    node_id: str
    party_id: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class ControlServerUnreachable(Event):
    """The node lost its control server, or could not reach it (once an outage, never a retry).

    Tunnels do not depend on it: joins, leaves, announcements and relay tickets wait.
    """

    node_id: str
    control_url: str
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class ControlServerReachable(Event):
    """The control server answers again; ``outage_s``: how long this run could not reach it."""

    node_id: str
    control_url: str
    outage_s: float | None


@register
@dataclass(frozen=True, kw_only=True)
class NodeAlive(Event):
    """The node runs and has written nothing else for ``quiet_s`` seconds (a sign of life).

    At most one a quiet interval (``ActorConfig.alive_interval_s``), none while anything
    else is written: replay never shows a running node as down, and a crash's time is
    known to within that interval.
    """

    node_id: str
    quiet_s: float


# ---------------------------------------------------------------- party stream


@register
@dataclass(frozen=True, kw_only=True)
class PartyCreated(Event):
    """``control_url``: the control plane the party lives on (empty before v2 or without one)."""

    party_id: str
    name: str
    host_peer_id: str
    subnet: str = "10.66.0.0/16"
    control_url: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class PartyJoined(Event):
    """The local node became a member of a party created elsewhere."""

    party_id: str
    name: str
    local_peer_id: str
    control_url: str = ""
    subnet: str = "10.66.0.0/16"


@register
@dataclass(frozen=True, kw_only=True)
class PeerJoined(Event):
    party_id: str
    peer_id: str
    name: str
    public_key: str
    nat_type: str = NAT_UNKNOWN
    is_local: bool = False
    candidates: tuple[str, ...] = ()


@register
@dataclass(frozen=True, kw_only=True)
class PeerUpdated(Event):
    """A member re-announced itself: what it says about itself now (name, NAT type, candidates)."""

    party_id: str
    peer_id: str
    name: str
    nat_type: str
    candidates: tuple[str, ...] = ()


@register
@dataclass(frozen=True, kw_only=True)
class VirtualIpAllocated(Event):
    party_id: str
    peer_id: str
    virtual_ip: str


@register
@dataclass(frozen=True, kw_only=True)
class VirtualIpReleased(Event):
    party_id: str
    peer_id: str
    virtual_ip: str


@register
@dataclass(frozen=True, kw_only=True)
class LocalAddressAssigned(Event):
    """Outcome: the local virtual IP is on this node's WireGuard interface."""

    party_id: str
    virtual_ip: str
    interface: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class LocalAddressFailed(Event):
    """Outcome: the local virtual IP could not be put on the interface, or a check found it on no
    working interface any more (wireguard-go exited): the party cannot carry traffic."""

    party_id: str
    virtual_ip: str
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class PeerLeft(Event):
    party_id: str
    peer_id: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class PartyLeft(Event):
    """The local node left the party (or it was disbanded)."""

    party_id: str
    reason: str


# Static devices: a console, phone or old PC without LANrage, a stock WireGuard peer of one
# member (its router) that forwards between it and the party. Its connection transitions go
# to a peer stream of its own (``peer:<node>:<party>:<device_id>``), like a member's.


@register
@dataclass(frozen=True, kw_only=True)
class StaticDeviceExported(Event):
    """Decision on the routing member (``via_peer_id``, this node): the device becomes its
    WireGuard peer with ``virtual_ip``/32. The device's private key exists only in the
    config the user received; ``endpoint`` is where that config tells the device to dial."""

    party_id: str
    device_id: str
    name: str
    public_key: str
    virtual_ip: str
    via_peer_id: str
    endpoint: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class StaticDeviceRouted(Event):
    """Decision on another member: the device's /32 goes through member ``via_peer_id``,
    as that member announced it through the control plane."""

    party_id: str
    device_id: str
    name: str
    public_key: str
    virtual_ip: str
    via_peer_id: str


@register
@dataclass(frozen=True, kw_only=True)
class StaticDeviceApplied(Event):
    """Outcome: WireGuard carries the device (the router's peer, or the route on another member)."""

    party_id: str
    device_id: str
    detail: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class StaticDeviceFailed(Event):
    """Outcome: the WireGuard change for the device did not happen."""

    party_id: str
    device_id: str
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class StaticDeviceRemoved(Event):
    """The device is no longer part of the party here (the party was left, or its router left)."""

    party_id: str
    device_id: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class PeerAccountReceived(Event):
    """A member's own account of its side around a drop, as it said it: shown, never acted on.

    ``peer_id`` is the member it is about; ``said_by`` who said it: ``peer`` (the member
    itself: the control server names the sender, so a member speaks only about itself) or
    ``control server`` (its own knowledge: when it last heard the member, ``ACCOUNT_OFFLINE``).
    ``kind``: one of ``ACCOUNT_KINDS``; ``started_at``/``ended_at``: ISO 8601 (UTC) times as
    said, ``ended_at`` empty while it lasts; ``detail``: the words said.
    """

    party_id: str
    peer_id: str
    kind: str
    started_at: str
    ended_at: str = ""
    detail: str = ""
    said_by: str = "peer"


# What a member may say about its own side (PeerAccountReceived.kind).
ACCOUNT_UPLINK = "uplink_down"  # every connection lost together with its relays or control server
ACCOUNT_CRASHED = "crashed"  # its node's run ended without a clean stop (started_at: last alive)
ACCOUNT_RESTARTED = "restarted"  # stopped cleanly and started again
ACCOUNT_ENDPOINT = "endpoint_changed"  # its public mapping moved
ACCOUNT_LEFT = "left"  # it left the party
ACCOUNT_RELAY = "relay_failed"  # the relay it used stopped answering
ACCOUNT_KINDS = (ACCOUNT_UPLINK, ACCOUNT_CRASHED, ACCOUNT_RESTARTED, ACCOUNT_ENDPOINT, ACCOUNT_LEFT,
                 ACCOUNT_RELAY)
# The control server's own word: it heard nothing from the member (from its last frame).
ACCOUNT_OFFLINE = "offline"
SAID_BY_PEER = "peer"
SAID_BY_SERVER = "control server"


# ---------------------------------------------------------------- peer connection stream


@register
@dataclass(frozen=True, kw_only=True)
class ConnectionAttemptStarted(Event):
    party_id: str
    peer_id: str
    attempt: int
    path: str


@register
@dataclass(frozen=True, kw_only=True)
class PathChosen(Event):
    party_id: str
    peer_id: str
    path: str
    reason: str
    endpoint: str | None = None
    relay: str | None = None


@register
@dataclass(frozen=True, kw_only=True)
class HolePunchAttempted(Event):
    party_id: str
    peer_id: str
    local_candidates: tuple[str, ...]
    remote_candidates: tuple[str, ...]


@register
@dataclass(frozen=True, kw_only=True)
class HolePunchSucceeded(Event):
    party_id: str
    peer_id: str
    endpoint: str
    rtt_ms: float
    elapsed_ms: float


@register
@dataclass(frozen=True, kw_only=True)
class HolePunchFailed(Event):
    party_id: str
    peer_id: str
    reason: str
    elapsed_ms: float


@register
@dataclass(frozen=True, kw_only=True)
class RemotePeerUpdated(Event):
    """What this connection knows of the remote side: its candidates and NAT type."""

    party_id: str
    peer_id: str
    candidates: tuple[str, ...]
    nat_type: str


@register
@dataclass(frozen=True, kw_only=True)
class RelayAllocationRequested(Event):
    """Intent: ask ``relay`` for a session with the peer (``purpose`` says why)."""

    party_id: str
    peer_id: str
    relay: str
    purpose: str


@register
@dataclass(frozen=True, kw_only=True)
class RelaySessionOpened(Event):
    """Outcome: the relay session is ours; WireGuard reaches it at ``endpoint``."""

    party_id: str
    peer_id: str
    relay: str
    session_id: str
    endpoint: str


@register
@dataclass(frozen=True, kw_only=True)
class RelayAllocationFailed(Event):
    party_id: str
    peer_id: str
    relay: str
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class RelaySessionReleased(Event):
    """Outcome of giving a session back (``error`` empty when the relay took it back)."""

    party_id: str
    peer_id: str
    relay: str
    session_id: str
    error: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class NoPathAvailable(Event):
    """Neither a direct path nor a relay: why, in words."""

    party_id: str
    peer_id: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class WireGuardPeerConfigRequested(Event):
    """Intent: the WireGuard peer must look like this. ``WireGuardPeerConfigured`` says it does."""

    party_id: str
    peer_id: str
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive_s: int = 25


@register
@dataclass(frozen=True, kw_only=True)
class WireGuardPeerRemovalRequested(Event):
    party_id: str
    peer_id: str
    public_key: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class WireGuardPeerConfigured(Event):
    """Outcome: WireGuard holds the peer with this endpoint.

    v1 was written *before* the change (it was the decision and assumed the effect);
    v2 is written after the change was made. ``decided_here`` marks upcast v1 rows.
    """

    version = 2
    party_id: str
    peer_id: str
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive_s: int = 25
    decided_here: bool = False


@upcaster("WireGuardPeerConfigured", 1)
def _wireguard_configured_v1_to_v2(payload: Payload) -> Payload:
    payload["decided_here"] = True
    return payload


@register
@dataclass(frozen=True, kw_only=True)
class WireGuardPeerRemoved(Event):
    """Outcome: WireGuard no longer holds the peer (v1: the decision, written before the change)."""

    version = 2
    party_id: str
    peer_id: str
    public_key: str
    reason: str
    decided_here: bool = False


@upcaster("WireGuardPeerRemoved", 1)
def _wireguard_removed_v1_to_v2(payload: Payload) -> Payload:
    payload["decided_here"] = True
    return payload


@register
@dataclass(frozen=True, kw_only=True)
class WireGuardPeerChangeFailed(Event):
    """Outcome: the requested change (``operation``: configure or remove) did not happen."""

    party_id: str
    peer_id: str
    public_key: str
    operation: str
    error: str


@register
@dataclass(frozen=True, kw_only=True)
class ConnectionStateChanged(Event):
    """v2 adds what a change away from a healthy state knew of the tunnel (empty otherwise):

    ``last_handshake_age_s``: seconds since WireGuard's last handshake with the peer, as
    its counters said at the last reading before the change (None: never, or not read);
    ``recent_probes``: the outcomes of the last probes before the change, oldest first,
    ``+`` answered and ``-`` lost, with ``~`` where WireGuard's endpoint for the peer moved
    (an ``EndpointChanged``) between two of them.
    """

    version = 2
    party_id: str
    peer_id: str
    from_state: str | None
    to_state: str
    reason: str
    path: str | None = None
    endpoint: str | None = None
    relay: str | None = None
    latency_ms: float | None = None
    last_handshake_age_s: float | None = None
    recent_probes: str = ""


@upcaster("ConnectionStateChanged", 1)
def _state_changed_v1_to_v2(payload: Payload) -> Payload:
    payload.setdefault("last_handshake_age_s", None)
    payload.setdefault("recent_probes", "")
    return payload


# Who saw a peer's endpoint change: WireGuard (it roamed to where the peer's packets now
# come from) or the control plane (the peer announced candidates without the one in use).
SEEN_BY_WIREGUARD = "wireguard"
SEEN_IN_ANNOUNCE = "announce"


@register
@dataclass(frozen=True, kw_only=True)
class EndpointChanged(Event):
    """The peer's endpoint changed (NAT rebinding, roaming, a new network), once per change.

    v2 adds ``seen_by``: only what WireGuard saw changes the connection's endpoint (it
    already sends there); an announced change is a fact about the peer, not a decision.
    """

    version = 2
    party_id: str
    peer_id: str
    old_endpoint: str | None
    new_endpoint: str | None
    reason: str
    seen_by: str = SEEN_BY_WIREGUARD


@upcaster("EndpointChanged", 1)
def _endpoint_changed_v1_to_v2(payload: Payload) -> Payload:
    payload.setdefault("seen_by", SEEN_BY_WIREGUARD)
    return payload


@register
@dataclass(frozen=True, kw_only=True)
class ReconnectAttempted(Event):
    party_id: str
    peer_id: str
    attempt: int
    max_attempts: int
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class PathSwitched(Event):
    """Direct to relay, relay to direct (the upgrade), or one relay to another."""

    party_id: str
    peer_id: str
    from_path: str
    to_path: str
    reason: str
    endpoint: str | None = None
    from_relay: str | None = None
    to_relay: str | None = None
    from_latency_ms: float | None = None
    to_latency_ms: float | None = None


@register
@dataclass(frozen=True, kw_only=True)
class DirectPathRetried(Event):
    """While on a relay, the periodic retry of the direct path, and its outcome."""

    party_id: str
    peer_id: str
    succeeded: bool
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class DirectPathRetriesRepeated(Event):
    """``count`` more retries of the direct path (each a hole punch) that failed for the same
    ``reason`` as the ``DirectPathRetried`` before them, from ``first_at`` to ``last_at``
    (ISO 8601, UTC): a repeated outcome is counted, not written again.

    Written when the run ends (another outcome, the connection leaves the relay or stops)
    or once it has lasted ``ConnectionConfig.repeats_record_max_s``.
    """

    party_id: str
    peer_id: str
    reason: str
    count: int
    first_at: str
    last_at: str


@register
@dataclass(frozen=True, kw_only=True)
class DecisionInputsRecorded(Event):
    """What the connection's next decisions read besides its transitions, as it stood when
    written: the loss window of each path (``windows``: path, or "" before the first, and its
    last probe outcomes, "+" answered, "-" lost), the lost probes in a row (each weighted by its
    interval), the answers in a row above the latency threshold on ``slow_path``, the recent
    probe outcomes a setback shows, a failed spell's retries, the last switch for quality,
    the relay monitor's last word on the selected relay (relay, loss, probes), a relay offer
    of the peer still to be joined, the session that failed an allocation, the open run of
    failed direct retries (its count is written before, as ``DirectPathRetriesRepeated``), the decision
    timers still armed (kind, seconds left). Ages and seconds left are as of ``written_at``
    (UNIX time): a restart takes the time between the record and its start off them.

    Written at a clean stop, and on the metrics beat when the probes changed the window
    since the last record (a crash loses at most one beat of it): a steady path writes none.
    """

    party_id: str
    peer_id: str
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
    retry_run: str | None = None  # the reason of the run of failed direct retries still counted
    timers: tuple[tuple[str, float], ...] = ()
    written_at: float = 0.0


@register
@dataclass(frozen=True, kw_only=True)
class MetricsSampled(Event):
    """One aggregated sample over ``window_s`` seconds (never one row a probe).

    ``probe_error``: why the window's last lost probe was lost, when the prober said
    (empty when none was lost, or a probe simply went unanswered).

    v2 counts repeats: ``windows`` metric windows whose figures stayed the same (within
    the tolerances of ``ConnectionConfig``) are one sample, from ``first_at`` (ISO 8601,
    UTC; empty for one window) to the time it was recorded; ``window_s`` is their sum and
    the figures are their average. v1 rows are one window.
    """

    version = 2
    party_id: str
    peer_id: str
    window_s: float
    probes: int
    latency_ms: float | None
    jitter_ms: float | None
    loss: float
    rx_bytes: int
    tx_bytes: int
    quality: float
    probe_error: str = ""
    windows: int = 1
    first_at: str = ""


@upcaster("MetricsSampled", 1)
def _metrics_sampled_v1_to_v2(payload: Payload) -> Payload:
    payload.setdefault("windows", 1)
    payload.setdefault("first_at", "")
    return payload


# ---------------------------------------------------------------- relay streams


@register
@dataclass(frozen=True, kw_only=True)
class RelayProbed(Event):
    """Aggregated probes of one relay over an interval.

    v2 counts repeats: ``windows`` record intervals that changed nothing (all probes
    answered, or none, and the round trip within the tolerances of
    ``RelayMonitorConfig``) are one record, from ``first_at`` (ISO 8601, UTC; empty for
    one interval) to the time it was recorded; ``rtt_ms`` is the median of their medians.
    """

    version = 2
    relay: str
    probes: int
    answered: int
    rtt_ms: float | None
    windows: int = 1
    first_at: str = ""


@upcaster("RelayProbed", 1)
def _relay_probed_v1_to_v2(payload: Payload) -> Payload:
    payload.setdefault("windows", 1)
    payload.setdefault("first_at", "")
    return payload


@register
@dataclass(frozen=True, kw_only=True)
class RelayDegraded(Event):
    relay: str
    rtt_ms: float | None
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class RelaySelected(Event):
    """v2: ``selection`` numbers a node's selections (1, 2, ...; 0 before v2), so a restart
    knows the newest from the relays' folded states without reading their streams back."""

    version = 2
    relay: str
    rtt_ms: float | None
    previous_relay: str | None
    reason: str
    selection: int = 0


@upcaster("RelaySelected", 1)
def _relay_selected_v1_to_v2(payload: Payload) -> Payload:
    payload.setdefault("selection", 0)
    return payload


@register
@dataclass(frozen=True, kw_only=True)
class RelaySessionAllocated(Event):
    """Recorded by the relay server: a session id (never its token) and its two ends."""

    relay: str
    session_id: str
    party_id: str
    peer_a: str
    peer_b: str


@register
@dataclass(frozen=True, kw_only=True)
class RelaySessionExpired(Event):
    relay: str
    session_id: str
    reason: str
    forwarded_packets: int
    forwarded_bytes: int


@register
@dataclass(frozen=True, kw_only=True)
class RelayCountersSampled(Event):
    relay: str
    window_s: float
    forwarded_packets: int
    forwarded_bytes: int
    dropped_unauthenticated: int
    dropped_rate_limited: int
    dropped_malformed: int
    active_sessions: int
    dropped_no_peer: int = 0  # from a bound side while the other side was not bound yet
    hellos_refused: int = 0  # wrong key, expired, replayed or stale session hellos


@register
@dataclass(frozen=True, kw_only=True)
class RelayServerStarted(Event):
    relay: str


@register
@dataclass(frozen=True, kw_only=True)
class RelayServerStopped(Event):
    relay: str
    reason: str


# ---------------------------------------------------------------- control server stream


@register
@dataclass(frozen=True, kw_only=True)
class ControlPartyRegistered(Event):
    """``secret_hash`` is a salted SHA-256 of the invite's 256-bit secret, never the secret."""

    party_id: str
    name: str
    host_peer_id: str
    secret_hash: str = ""
    subnet: str = "10.66.0.0/16"


@register
@dataclass(frozen=True, kw_only=True)
class ControlMemberAdmitted(Event):
    party_id: str
    peer_id: str
    public_key: str
    virtual_ip: str
    name: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class ControlMemberRemoved(Event):
    party_id: str
    peer_id: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class ControlJoinRefused(Event):
    party_id: str
    reason: str
    public_key: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class ControlRelayRegistered(Event):
    relay: str


@register
@dataclass(frozen=True, kw_only=True)
class ControlJoinRefusalsCounted(Event):
    """Refused joins from one source address after the first of a window: counted, not a row each."""

    address: str
    count: int
    window_s: float


# ---------------------------------------------------------------- agent stream (agent:<node_id>)


@register
@dataclass(frozen=True, kw_only=True)
class PartyControlBound(Event):
    """The node agent reaches this party through this control plane (ws:// URL or file:// directory).

    Recorded by the agent on create and join, so a restart reconnects to the right place.
    """

    node_id: str
    party_id: str
    control_url: str


@register
@dataclass(frozen=True, kw_only=True)
class PartyControlUnbound(Event):
    node_id: str
    party_id: str
    reason: str


@register
@dataclass(frozen=True, kw_only=True)
class BroadcastCountersSampled(Event):
    """LAN discovery traffic on one port over ``window_s`` seconds (one row an interval, never a packet).

    ``destination`` is ``broadcast`` (limited, virtual-subnet or LAN broadcast) or the multicast
    group. ``captured``: local datagrams taken; ``forwarded``: wrapped copies sent to peers;
    ``received``: valid copies from peers; ``reemitted``: delivered to local games; ``dropped``:
    refused after the port was known (rate limit, duplicate, too large, no peers, errors).
    """

    node_id: str
    destination: str
    port: int
    window_s: float
    captured: int
    forwarded: int
    received: int
    reemitted: int
    dropped: int
