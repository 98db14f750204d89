"""The small interfaces the actors use to touch the network.

Each has one real implementation (``mesh/wireguard``, ``mesh/nat``, ``mesh/relay``,
``mesh/control``) and one simulated one (``mesh/sim``) for fast, deterministic
actor tests. Adapters are blocking calls: the actors never make them, the edge does (actors/edge.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class MeshError(Exception):
    """Base of every error the network layer raises; its message is for the user."""


class RelaySessionFailed(MeshError):
    """The relay session ``session_id`` on ``relay`` could not be opened from this host: the
    control server may have handed back a pair's session on a relay this side cannot reach,
    so the caller reports it, and it is never handed back."""

    def __init__(self, message: str, relay: str, session_id: str) -> None:
        super().__init__(message)
        self.relay = relay
        self.session_id = session_id


@dataclass(frozen=True)
class PeerStats:
    public_key: str
    endpoint: str | None
    last_handshake: float | None  # unix time, None if never
    rx_bytes: int
    tx_bytes: int


class WireGuard(Protocol):
    """One WireGuard interface of this node."""

    @property
    def public_key(self) -> str: ...

    @property
    def listen_port(self) -> int: ...

    def configure_peer(self, public_key: str, endpoint: str | None, allowed_ips: Sequence[str],
                       keepalive_s: int = 25) -> None:
        """Add the peer, or update it in place (idempotent)."""
        ...

    def remove_peer(self, public_key: str) -> None:
        """Remove the peer if present (idempotent)."""
        ...

    def peer_stats(self) -> dict[str, PeerStats]: ...

    def set_routes(self, public_key: str, routes: Sequence[str]) -> None:
        """Extra allowed IPs of the peer (static devices it routes for), kept beside the ones
        ``configure_peer`` gives, now and in every later ``configure_peer`` of that peer."""
        ...


class LocalInterface(Protocol):
    """This node's WireGuard interface as the place its virtual IPs live."""

    def assign(self, virtual_ip: str) -> str:
        """Put ``virtual_ip`` on the interface (creating it on first use); its name."""
        ...

    def check(self, virtual_ip: str) -> None:
        """Raise ``MeshError`` with the cause unless ``virtual_ip`` is on a working interface."""
        ...

    def enable_forwarding(self) -> None:
        """Forward IPv4 between WireGuard peers (this node routes for a static device)."""
        ...


class LatencyProber(Protocol):
    def probe(self, virtual_ip: str, timeout_s: float) -> float | None:
        """Round-trip time in ms to a peer's virtual IP through the tunnel, None when lost."""
        ...


@dataclass(frozen=True)
class NatInfo:
    nat_type: str
    public_ip: str | None
    public_port: int | None
    local_ip: str
    local_port: int
    stun_server: str


class NatDetector(Protocol):
    def detect(self) -> NatInfo | None:
        """None means no STUN server answered: relay-only mode."""
        ...


@dataclass(frozen=True)
class PunchResult:
    succeeded: bool
    endpoint: str | None  # the remote "ip:port" that answered, for WireGuard
    rtt_ms: float | None
    elapsed_ms: float
    reason: str


class HolePuncher(Protocol):
    def candidates(self) -> tuple[str, ...]:
        """This node's candidate endpoints ("ip:port"): public mapping, LAN, forwarded port."""
        ...

    def punch(self, session: str, remote_candidates: Sequence[str], timeout_s: float, *,
              peer_public_key: str | None = None) -> PunchResult:
        """Send to every candidate at the agreed moment until a punch ACK confirms one.

        ``peer_public_key`` lets the puncher key the session with the X25519 agreement of
        the two WireGuard keys, so only the two peers can confirm a path.
        """
        ...


@dataclass(frozen=True)
class RelayAllocation:
    relay: str  # "host:port" of the relay server
    session_id: str
    endpoint: str  # what the WireGuard peer's endpoint must be set to


class RelayClient(Protocol):
    def allocate(self, party_id: str, peer_id: str, relay: str,
                 failed_session: str | None = None) -> RelayAllocation:
        """A session with ``peer_id`` on ``relay``; never ``failed_session``, which this side saw fail."""
        ...

    def release(self, allocation: RelayAllocation) -> None: ...

    def holds(self, allocation: RelayAllocation) -> bool:
        """Whether this process still holds the session (a restarted agent does not)."""
        ...

    def probe(self, relay: str, timeout_s: float) -> float | None:
        """Round-trip time in ms to a relay server, None when it did not answer."""
        ...
