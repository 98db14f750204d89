"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

PartyName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreatePartyIn(_Body):
    name: PartyName


class JoinPartyIn(_Body):
    invite: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class LeavePartyIn(_Body):
    party_id: Ident | None = None


class PartyCreatedOut(BaseModel):
    party_id: str
    name: str
    invite: str
    virtual_ip: str | None
    local_peer_id: str


class PartyJoinedOut(BaseModel):
    party_id: str
    name: str
    virtual_ip: str | None
    local_peer_id: str


class PartyLeftOut(BaseModel):
    party_id: str
    reason: str


class ErrorOut(BaseModel):
    detail: str


class PeerOut(BaseModel):
    peer_id: str
    name: str
    public_key: str
    virtual_ip: str | None
    nat_type: str
    is_local: bool
    state: str | None
    path: str | None
    endpoint: str | None
    relay: str | None
    latency_ms: float | None
    jitter_ms: float | None
    loss: float | None
    quality: float | None
    rx_bytes: int
    tx_bytes: int
    reconnects: int
    # Why WireGuard did not take this peer's last change (e.g. the interface is gone), from
    # the log's last WireGuardPeerChangeFailed; None once a change held.
    wireguard_error: str | None = None


class DeviceOut(BaseModel):
    device_id: str
    name: str
    public_key: str
    virtual_ip: str
    via_peer_id: str
    via_name: str
    routed_here: bool
    applied: bool
    error: str | None
    state: str | None
    endpoint: str | None
    last_handshake: float | None  # unix time; only on the member that routes it


class ExportDeviceIn(_Body):
    name: PartyName
    party_id: Ident | None = None  # omitted: the only party this node is in
    # IP:PORT where the device reaches this node (a LAN address, or a public one with a port
    # forward); omitted: this node's public address as STUN saw it.
    endpoint: Annotated[str, StringConstraints(min_length=3, max_length=64)] | None = None


class ExportDeviceOut(BaseModel):
    party_id: str
    device_id: str
    name: str
    virtual_ip: str
    endpoint: str
    config: str  # the device's wg-quick file; it holds the device's private key


class PartyOut(BaseModel):
    party_id: str
    name: str
    active: bool
    local_peer_id: str
    host_peer_id: str
    subnet: str
    virtual_ip: str | None
    # Why this node does not hold its address on a working interface (the log's
    # LocalAddressFailed, e.g. the port is held by another program); None when it does.
    interface_error: str | None = None
    peers: list[PeerOut]
    devices: list[DeviceOut] = []


class NodeOut(BaseModel):
    node_id: str
    public_key: str
    running: bool
    listen_port: int
    nat_type: str
    public_endpoint: str | None
    relay: str | None
    relay_only: bool


class StatusOut(BaseModel):
    node: NodeOut | None
    agent: dict[str, Any]
    parties: list[PartyOut]
    position: int


class PeerMetricsOut(PeerOut):
    party_id: str


class PeerDetailOut(BaseModel):
    peer: PeerMetricsOut
    samples: list[dict[str, Any]]


class SummaryOut(BaseModel):
    parties: int
    peers: int
    states: dict[str, int]
    direct: int
    relayed: int
    avg_latency_ms: float | None
    max_latency_ms: float | None
    avg_quality: float | None
    rx_bytes: int
    tx_bytes: int
    events: int
    relays: dict[str, Any]


class EventOut(BaseModel):
    global_position: int
    stream_id: str
    stream_position: int
    event_type: str
    event_version: int
    recorded_at: str
    payload: dict[str, Any]
    metadata: dict[str, Any]


class EventsOut(BaseModel):
    events: list[EventOut]
    next_after: int


class LiveOut(BaseModel):
    connections: list[dict[str, Any]]


class HistoryOut(BaseModel):
    peer_id: str
    name: str = ""
    party_id: str = ""
    transitions: list[dict[str, Any]]


class ReplayOut(BaseModel):
    position: int
    parties: list[dict[str, Any]]
    connections: list[dict[str, Any]]


class DiagnoseOut(BaseModel):
    peer_id: str
    name: str = ""
    incident: dict[str, Any] | None


class TimelineOut(BaseModel):
    rows: list[dict[str, Any]]
    next_before: int | None = None
