"""A simulated network: deterministic, in memory, controlled by the test.

One ``SimNetwork`` per name and process. A node's adapters look things up in it:
latency of the direct path to a virtual IP, relay round trips, which candidates a
hole punch can reach, and the WireGuard peers each node configured (with a log of
every change, so tests can prove that no change was made twice). Nothing sleeps
and nothing is random: time is the caller's business.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from mesh.interfaces import MeshError, NatInfo, PeerStats, PunchResult, RelayAllocation, RelaySessionFailed
from mesh.wireguard.config import check_one_key_per_address

DEFAULT_DIRECT_MS = 20.0
DEFAULT_RELAY_MS = 40.0


@dataclass
class SimPeer:
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive_s: int
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake: float | None = None  # unix time; a test sets it to play a silent peer


@dataclass
class SimNetwork:
    name: str
    direct_latency: dict[str, float | None] = field(default_factory=dict)  # virtual ip -> ms
    relay_latency: dict[str, float | None] = field(default_factory=dict)  # relay -> ms, None: down
    unreachable: set[str] = field(default_factory=set)  # candidates no punch or packet reaches
    wireguard_peers: dict[str, dict[str, SimPeer]] = field(default_factory=dict)  # node -> key -> peer
    wireguard_log: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    relay_log: list[tuple[str, str, str]] = field(default_factory=list)  # (op, relay, session)
    failed_sessions: list[str] = field(default_factory=list)  # reported by allocations, in order
    # (peer id, relay asked for) -> (relay, session) the next allocation gets instead, once:
    # the control server hands back a pair's session on its own relay, whatever is asked.
    handed_sessions: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    punch_log: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    probe_count: int = 0
    wireguard_error: str | None = None  # every WireGuard change fails with this while set
    interface_error: str | None = None  # assigning a virtual IP fails with this while set
    interfaces_gone: set[str] = field(default_factory=set)  # nodes whose interface vanished (until assigned)
    probe_error: str | None = None  # every probe fails with this while set
    # Every relay allocation fails with this while set (no ticket: the control server is away),
    # the relays and the sessions already held carry on.
    allocation_error: str | None = None
    addresses: dict[str, list[str]] = field(default_factory=dict)  # node -> virtual IPs assigned
    routes: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # node -> key -> extra IPs
    forwarding: set[str] = field(default_factory=set)  # nodes that forward between their peers
    handshakes: dict[str, float] = field(default_factory=dict)  # public key -> last handshake (unix)
    # Random loss of every packet on every path, each direction on its own (a probe or a
    # reply is lost with 1 - (1 - loss)^2), from a seeded generator: runs repeat exactly.
    loss: float = 0.0
    relay_loss: float = 0.0  # the same on relay paths and relay probes
    # On relay paths to peers only, when set: the loss is on the peer's uplink, which this
    # node's relay probes do not cross.
    relay_path_loss: float | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    # Peers (virtual IPs) whose own uplink is down: nothing reaches them, directly or relayed.
    peers_down: set[str] = field(default_factory=set)
    # Random loss on every path to one peer (virtual IP), as on that peer's own failing line.
    peer_loss: dict[str, float] = field(default_factory=dict)
    packet_bytes: int = 148  # one small game packet inside WireGuard

    # ------------------------------------------------------------ test controls

    def set_latency(self, virtual_ip: str, latency_ms: float | None) -> None:
        """Direct-path round trip to ``virtual_ip``; None drops every probe on the direct path."""
        self.direct_latency[virtual_ip] = latency_ms

    def set_relay(self, relay: str, latency_ms: float | None) -> None:
        """Round trip to a relay (and through it); None: the relay is down."""
        self.relay_latency[relay] = latency_ms

    def block(self, *candidates: str) -> None:
        self.unreachable.update(candidates)

    def unblock(self, *candidates: str) -> None:
        self.unreachable.difference_update(candidates)

    def round_trip_lost(self, loss: float) -> bool:
        return loss > 0 and (self.rng.random() < loss or self.rng.random() < loss)

    def path_loss(self, node: str, virtual_ip: str) -> float:
        peer = next((p for p in self.wireguard_peers.get(node, {}).values()
                     if f"{virtual_ip}/32" in p.allowed_ips), None)
        if virtual_ip in self.peer_loss:
            return self.peer_loss[virtual_ip]
        if peer is not None and peer.endpoint in self.relay_latency:
            return self.relay_loss if self.relay_path_loss is None else self.relay_path_loss
        return self.loss

    def carry(self, node: str, virtual_ip: str, packets: int) -> None:
        """``node`` sends ``packets`` to ``virtual_ip`` and the peer answers each one: WireGuard's
        tx grows by every packet, rx by every answer that makes it back over the current path."""
        peer = next((p for p in self.wireguard_peers.get(node, {}).values()
                     if f"{virtual_ip}/32" in p.allowed_ips), None)
        if peer is None:
            return
        alive = self.path_latency(node, virtual_ip) is not None
        loss = self.path_loss(node, virtual_ip)
        for _ in range(packets):
            peer.tx_bytes += self.packet_bytes
            if alive and not self.round_trip_lost(loss):
                peer.rx_bytes += self.packet_bytes

    def wireguard_changes(self, node: str) -> list[tuple[str, str, str | None]]:
        return [(op, key, endpoint) for n, op, key, endpoint in self.wireguard_log if n == node]

    # ------------------------------------------------------------ what adapters see

    def path_latency(self, node: str, virtual_ip: str) -> float | None:
        peer = next((p for p in self.wireguard_peers.get(node, {}).values()
                     if f"{virtual_ip}/32" in p.allowed_ips), None)
        if peer is None or peer.endpoint is None or virtual_ip in self.peers_down:
            return None
        if peer.endpoint in self.relay_latency:
            return self.relay_latency[peer.endpoint]
        if peer.endpoint in self.unreachable:
            return None
        return self.direct_latency.get(virtual_ip, DEFAULT_DIRECT_MS)


_networks: dict[str, SimNetwork] = {}


def network(name: str = "default") -> SimNetwork:
    """The process-wide simulated network called ``name`` (created empty on first use)."""
    return _networks.setdefault(name, SimNetwork(name))


def reset(name: str) -> SimNetwork:
    _networks[name] = SimNetwork(name)
    return _networks[name]


class SimWireGuard:
    def __init__(self, net: SimNetwork, node: str, public_key: str, listen_port: int) -> None:
        self._net = net
        self._node = node
        self._public_key = public_key
        self._listen_port = listen_port
        net.wireguard_peers.setdefault(node, {})

    @property
    def public_key(self) -> str:
        return self._public_key

    @property
    def listen_port(self) -> int:
        return self._listen_port

    def configure_peer(self, public_key: str, endpoint: str | None, allowed_ips: Sequence[str],
                       keepalive_s: int = 25) -> None:
        if self._net.wireguard_error is not None:
            raise MeshError(self._net.wireguard_error)
        peers = self._net.wireguard_peers[self._node]
        check_one_key_per_address(public_key, allowed_ips, {k: p.allowed_ips for k, p in peers.items()})
        old = peers.get(public_key)
        extra = self._net.routes.get(self._node, {}).get(public_key, ())
        peers[public_key] = SimPeer(endpoint, (*allowed_ips, *(r for r in extra if r not in allowed_ips)),
                                    keepalive_s, old.rx_bytes if old else 0, old.tx_bytes if old else 0)
        self._net.wireguard_log.append((self._node, "configure", public_key, endpoint))

    def set_routes(self, public_key: str, routes: Sequence[str]) -> None:
        if self._net.wireguard_error is not None:
            raise MeshError(self._net.wireguard_error)
        check_one_key_per_address(public_key, routes, {k: p.allowed_ips for k, p
                                                       in self._net.wireguard_peers[self._node].items()})
        table = self._net.routes.setdefault(self._node, {})
        before = table.get(public_key, ())
        table[public_key] = tuple(routes)
        peer = self._net.wireguard_peers[self._node].get(public_key)
        if peer is not None:
            own = tuple(ip for ip in peer.allowed_ips if ip not in before)
            peer.allowed_ips = (*own, *(r for r in routes if r not in own))
        self._net.wireguard_log.append((self._node, "routes", public_key, None))

    def remove_peer(self, public_key: str) -> None:
        if self._net.wireguard_error is not None:
            raise MeshError(self._net.wireguard_error)
        self._net.wireguard_peers[self._node].pop(public_key, None)
        self._net.wireguard_log.append((self._node, "remove", public_key, None))

    def peer_stats(self) -> dict[str, PeerStats]:
        shook = self._net.handshakes
        return {key: PeerStats(key, p.endpoint, p.last_handshake or shook.get(key), p.rx_bytes, p.tx_bytes)
                for key, p in self._net.wireguard_peers[self._node].items()}


class SimInterface:
    def __init__(self, net: SimNetwork, node: str) -> None:
        self._net = net
        self._node = node

    def assign(self, virtual_ip: str) -> str:
        if self._net.interface_error is not None:
            raise MeshError(self._net.interface_error)
        if self._node in self._net.interfaces_gone:  # created again, empty
            self._net.interfaces_gone.discard(self._node)
            self._net.addresses[self._node] = []
        assigned = self._net.addresses.setdefault(self._node, [])
        if virtual_ip not in assigned:
            assigned.append(virtual_ip)
        return f"sim-{self._node}"

    def check(self, virtual_ip: str) -> None:
        if self._node in self._net.interfaces_gone:
            raise MeshError(f"WireGuard interface sim-{self._node} is gone (did wireguard-go exit?)")
        if virtual_ip not in self._net.addresses.get(self._node, []):
            raise MeshError(f"{virtual_ip} is not on sim-{self._node}")

    def enable_forwarding(self) -> None:
        if self._net.interface_error is not None:
            raise MeshError(self._net.interface_error)
        self._net.forwarding.add(self._node)


class SimProber:
    def __init__(self, net: SimNetwork, node: str) -> None:
        self._net = net
        self._node = node

    def probe(self, virtual_ip: str, timeout_s: float) -> float | None:
        self._net.probe_count += 1
        if self._net.probe_error is not None:
            raise MeshError(self._net.probe_error)
        latency = self._net.path_latency(self._node, virtual_ip)
        if latency is not None and self._net.round_trip_lost(self._net.path_loss(self._node, virtual_ip)):
            return None
        return latency if latency is not None and latency <= timeout_s * 1000 else None


class SimPuncher:
    def __init__(self, net: SimNetwork, candidates: tuple[str, ...]) -> None:
        self._net = net
        self._candidates = candidates

    def candidates(self) -> tuple[str, ...]:
        return self._candidates

    def punch(self, session: str, remote_candidates: Sequence[str], timeout_s: float, *,
              peer_public_key: str | None = None) -> PunchResult:
        self._net.punch_log.append(("punch", session, tuple(remote_candidates)))
        for candidate in remote_candidates:
            if candidate not in self._net.unreachable:
                return PunchResult(True, candidate, DEFAULT_DIRECT_MS, 2 * DEFAULT_DIRECT_MS,
                                   "punch acknowledged")
        return PunchResult(False, None, None, timeout_s * 1000, "no candidate answered")


class SimRelayClient:
    def __init__(self, net: SimNetwork) -> None:
        self._net = net
        self._held: set[tuple[str, str]] = set()

    def allocate(self, party_id: str, peer_id: str, relay: str,
                 failed_session: str | None = None) -> RelayAllocation:
        if self._net.allocation_error is not None:
            raise MeshError(self._net.allocation_error)
        session = f"{party_id}/{peer_id}"
        if failed_session is not None:
            self._net.failed_sessions.append(failed_session)
            session = f"{session}/{len(self._net.failed_sessions)}"  # a new session, as the control server
        handed = self._net.handed_sessions.pop((peer_id, relay), None)
        if handed is not None and handed[1] != failed_session:
            relay, session = handed  # the pair's session elsewhere, as the control server's affinity may
        if self._net.relay_latency.get(relay, DEFAULT_RELAY_MS) is None:
            raise RelaySessionFailed(f"relay {relay} did not answer", relay, session)
        self._net.relay_log.append(("allocate", relay, session))
        self._held.add((relay, session))
        return RelayAllocation(relay, session, relay)

    def release(self, allocation: RelayAllocation) -> None:
        self._net.relay_log.append(("release", allocation.relay, allocation.session_id))
        self._held.discard((allocation.relay, allocation.session_id))

    def holds(self, allocation: RelayAllocation) -> bool:
        return (allocation.relay, allocation.session_id) in self._held

    def probe(self, relay: str, timeout_s: float) -> float | None:
        latency = self._net.relay_latency.get(relay, DEFAULT_RELAY_MS)
        if latency is not None and self._net.round_trip_lost(self._net.relay_loss):
            return None
        return latency if latency is not None and latency <= timeout_s * 1000 else None


class SimNatDetector:
    def __init__(self, info: NatInfo | None) -> None:
        self._info = info

    def detect(self) -> NatInfo | None:
        return self._info


@dataclass(frozen=True)
class SimAdapters:
    wireguard: SimWireGuard
    prober: SimProber
    puncher: SimPuncher
    relay_client: SimRelayClient
    nat_detector: SimNatDetector
    interface: SimInterface


def adapters(network_name: str = "default", node: str = "node", public_key: str = "",
             listen_port: int = 51820, candidates: Sequence[str] = (),
             nat_type: str = "open") -> SimAdapters:
    """The factory to name in an AdapterSpec: ``mesh.sim:adapters``."""
    net = network(network_name)
    public_ip, _, port = (candidates[0] if candidates else "").rpartition(":")
    info = NatInfo(nat_type, public_ip or None, int(port) if port else None, "192.0.2.1",
                   listen_port, "sim-stun")
    return SimAdapters(
        wireguard=SimWireGuard(net, node, public_key or f"sim-key-{node}", listen_port),
        prober=SimProber(net, node),
        puncher=SimPuncher(net, tuple(candidates)),
        relay_client=SimRelayClient(net),
        nat_detector=SimNatDetector(info),
        interface=SimInterface(net, node))
