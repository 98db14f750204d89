"""The real network adapters the edge uses, and the WireGuard interface the agent owns.

The agent builds them in its own process (``real_adapters``) and registers them for the
actors' edge: the interface is created on the node's first virtual IP (``InterfaceOwner``,
the ``interface`` adapter) and removed on shutdown; WireGuard peers are changed through
its UAPI socket; relay tickets come straight from the agent's control session.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from actors.adapters import register_adapters
from actors.messages import AdapterSpec
from mesh.interfaces import MeshError, NatInfo, PeerStats
from mesh.keys import load_private_key, validate_public_key
from mesh.nat.punch import UdpHolePuncher
from mesh.relay.client import ProxyRelayClient
from mesh.relay.tickets import RelayTicket
from mesh.wireguard import PeerConfig, PeerController, WireGuardInterface
from mesh.wireguard.config import check_one_key_per_address
from mesh.wireguard.probe import IcmpProber

if TYPE_CHECKING:
    from agent.node import Agent

SIM = "mesh.sim:adapters"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
REAL = "agent.adapters:real"


def adapter_spec(agent: Agent) -> AdapterSpec:
    """The spec the node actor's edge builds its adapters from (real ones: registered here)."""
    config = agent.config
    if config.adapters == SIM:
        return AdapterSpec.of(SIM, network_name=agent.node_id, node=agent.node_id,
                              public_key=agent.identity.public_key, listen_port=config.listen_port)
    if config.adapters == REAL:
        agent.adapters = real_adapters(agent)
        return register_adapters(agent.node_id, agent.adapters)
    return AdapterSpec.of(config.adapters)


def interface_owner(agent: Agent) -> InterfaceOwner | None:
    if agent.config.adapters != REAL:
        return None
    return InterfaceOwner(agent)


class InterfaceOwner:
    """Creates the node's WireGuard interface on its first virtual IP; removes it on close."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.interface: WireGuardInterface | None = None
        self.addresses: set[str] = set()
        # The edge's I/O workers assign in parallel (a party restored at start, a join): two
        # creations at once would start two wireguard-go for one name, and the second would
        # adopt the first's device, which its failed creation then removes.
        self._lock = threading.Lock()

    def assign(self, virtual_ip: str) -> str:
        """``mesh.interfaces.LocalInterface``: the interface holds ``virtual_ip``; its name."""
        self.ensure(virtual_ip)
        return self.agent.config.interface

    def ensure(self, virtual_ip: str) -> None:
        """The interface exists and holds ``virtual_ip`` (one address per party the node is in)."""
        ipaddress.ip_address(virtual_ip)
        with self._lock:
            self._ensure(virtual_ip)

    def check(self, virtual_ip: str) -> None:
        """``mesh.interfaces.LocalInterface``: ``virtual_ip`` is on a working interface now."""
        with self._lock:
            if self.interface is None or self.interface.gone:
                raise MeshError(f"WireGuard interface {self.agent.config.interface} is gone (did "
                                "wireguard-go exit?)")
            if virtual_ip not in self.addresses:
                raise MeshError(f"{virtual_ip} is not on {self.agent.config.interface}")

    def _ensure(self, virtual_ip: str) -> None:
        config = self.agent.config
        recreated = False
        if self.interface is not None and self.interface.gone:
            # wireguard-go exited (or the link was deleted): an address on it holds nothing.
            logger.warning("WireGuard interface {} is gone; creating it again for {}", config.interface,
                           virtual_ip)
            self._close()
            self.addresses.clear()
            recreated = True
        if self.interface is None:
            self.interface = self._create(virtual_ip)
            self.addresses.add(virtual_ip)
            adapters = getattr(self.agent, "adapters", None)
            if recreated and adapters is not None:
                # The new device is empty: the peers as last asked, so the log's
                # WireGuardPeerConfigured stays true.
                adapters.wireguard.reapply()
        if virtual_ip in self.addresses:
            return
        done = subprocess.run(["ip", "address", "add", f"{virtual_ip}/32", "dev", config.interface],
                              capture_output=True, text=True, timeout=10)
        if done.returncode != 0 and "exists" not in done.stderr:
            raise MeshError(f"cannot add {virtual_ip} to {config.interface}: {done.stderr.strip()}")
        self.addresses.add(virtual_ip)

    def _create(self, virtual_ip: str) -> WireGuardInterface:
        """The interface; a port still held by a wireguard-go of ours (a previous run's, still
        exiting or left behind) is waited for, or taken back, and the creation tried again."""
        from mesh.wireguard import PortInUseError
        from mesh.wireguard.port import reclaim_port

        config = self.agent.config
        for attempt in (1, 2):
            try:
                return WireGuardInterface.create(
                    self.agent.private_key, f"{virtual_ip}/16", name=config.interface,
                    listen_port=config.listen_port, state_dir=self.agent.state_dir)
            except PortInUseError:
                holder = reclaim_port(config.listen_port, config.interface)
                if holder is not None or attempt == 2:
                    raise MeshError(f"UDP port {config.listen_port} (--listen-port) is "
                                    f"{holder or 'in use'}; stop that program or choose another "
                                    "--listen-port") from None
                logger.warning("UDP port {} was still held by a wireguard-go of ours for {}: taken back, "
                               "creating the interface again", config.listen_port, config.interface)
        raise AssertionError("unreachable")

    def enable_forwarding(self) -> None:
        """``mesh.interfaces.LocalInterface``: IPv4 forwarding on, in this node's network namespace
        (the host's, outside a namespace), so a static device reaches the other members."""
        try:
            with open(IP_FORWARD, "r+") as switch:
                if switch.read().strip() != "1":
                    switch.seek(0)
                    switch.write("1\n")
        except OSError as error:
            raise MeshError(f"cannot turn IPv4 forwarding on ({IP_FORWARD}): {error.strerror}") from None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.interface is not None:
            self.interface.close(remove=True)
            self.interface = None


# ---------------------------------------------------------------- actor-side adapters


# WireGuard's rekey interval: a handshake younger than this means the session is alive.
SESSION_FRESH_S = 120.0
# The connections read WireGuard's counters on their own timers (once a second when idle):
# reads within this of each other share one UAPI call.
STATS_SHARED_S = 0.2


class UapiWireGuard:
    """``mesh.interfaces.WireGuard`` over the UAPI socket of the agent's interface.

    Both sides of a pair configure each other at about the same moment (both dial).
    Two things then cost WireGuard's 5 s retry: initiations that cross (each side
    answers the other's and drops the answer to its own), and an initiation lost
    because the other side was not ready (its relay session or its peer entry did not
    exist yet). A side cannot simply initiate again: WireGuard sends at most one
    initiation per 5 s. So the side with the smaller public key configures a new
    endpoint ``STAGGER_S`` later (crossings become rare), and if no handshake happened
    ``KICK_AFTER_S`` later it removes and re-adds the peer, which clears that limit and
    sends a fresh initiation at once (a few times at most; the other side never does,
    so two kicks cannot cross). A peer with a live session is never kicked. The same holds
    for a peer configured again on the endpoint it had while its session is stale (no
    handshake for ``session_fresh_s``): after an outage that outlived the session, both
    ends come back on the same signal and configure (and so initiate) at the same moment.
    """

    STAGGER_S = 0.1  # more than a round trip in a LAN, well below a human's notice
    KICK_AFTER_S = 1.0  # many round trips (a relay adds one), far below the 5 s retry
    KICKS = 3
    session_fresh_s = SESSION_FRESH_S

    def __init__(self, name: str, public_key: str, listen_port: int, state_dir: str = "") -> None:
        self._name = name
        self._state_dir = Path(state_dir) if state_dir else None
        self._controller: PeerController | None = None
        self._public_key = public_key
        self._listen_port = listen_port
        self._configs: dict[str, PeerConfig] = {}  # as last asked
        self._routes: dict[str, tuple[str, ...]] = {}  # static devices' /32s behind a peer
        self._lock = threading.Lock()  # a kick must not re-add a peer just removed or changed
        self._stats: tuple[float, dict[str, PeerStats]] | None = None
        self._stats_lock = threading.Lock()

    @property
    def public_key(self) -> str:
        return self._public_key

    @property
    def listen_port(self) -> int:
        return self._listen_port

    @property
    def _peers(self) -> PeerController:
        # The agent creates the interface on the node's first virtual IP, after the actor
        # processes built their adapters: attach on first use. The controller records the
        # peers as ours, so the owner's reconcile after a crash keeps and removes them.
        if self._controller is None:
            self._controller = PeerController(self._name, self._state_dir)
        return self._controller

    def configure_peer(self, public_key: str, endpoint: str | None, allowed_ips: Sequence[str],
                       keepalive_s: int = 25) -> None:
        config = PeerConfig.make(public_key, endpoint, allowed_ips, keepalive_s)
        previous = self._configs.get(config.public_key)
        kicks = (config.endpoint is not None and self._public_key < config.public_key
                 and (previous is None or previous.endpoint != config.endpoint
                      or not self._session_fresh(config.public_key)))
        if kicks:
            time.sleep(self.STAGGER_S)
        with self._lock:
            check_one_key_per_address(config.public_key, config.allowed_ips, self._routed())
            self._apply(config)
            self._configs[config.public_key] = config
        if kicks:
            self._kick_later(config, time.time(), self.KICKS)

    def _apply(self, config: PeerConfig) -> None:
        allowed_ips = self._with_routes(config.public_key, config.allowed_ips)
        self._peers.configure_peer(config.public_key, config.endpoint, allowed_ips, config.keepalive_s)
        self._stats = None

    def _kick_later(self, config: PeerConfig, since: float, left: int) -> None:
        if left <= 0:
            return
        timer = threading.Timer(self.KICK_AFTER_S, self._kick_if_silent, (config, since, left))
        timer.daemon = True
        timer.start()

    def _kick_if_silent(self, config: PeerConfig, since: float, left: int) -> None:
        with self._lock:
            if self._configs.get(config.public_key) != config:
                return  # removed or changed meanwhile: that change rules
            try:
                stats = self._peers.peer_stats().get(config.public_key)
                if stats is None or (stats.last_handshake or 0.0) > since - self.session_fresh_s:
                    return
                self._peers.remove_peer(config.public_key)
                self._apply(config)
            except MeshError as error:
                logger.warning("WireGuard peer {}: a fresh handshake failed: {}", config.public_key, error)
                return
        self._kick_later(config, since, left - 1)

    def _session_fresh(self, public_key: str) -> bool:
        try:
            stats = self.peer_stats().get(public_key)
        except MeshError:
            return True  # unknown: configure as asked, without a kick
        return stats is not None and (stats.last_handshake or 0.0) > time.time() - self.session_fresh_s

    def reapply(self) -> None:
        """Every peer as last asked, on an interface created again (empty)."""
        with self._lock:
            self._controller = None  # attached to the device that is gone
            for config in self._configs.values():
                try:
                    self._apply(config)
                except MeshError as error:
                    logger.warning("WireGuard peer {} not restored on the new interface: {}",
                                   config.public_key, error)

    def remove_peer(self, public_key: str) -> None:
        with self._lock:
            self._peers.remove_peer(public_key)
            self._configs.pop(validate_public_key(public_key), None)
            self._stats = None

    def set_routes(self, public_key: str, routes: Sequence[str]) -> None:
        key = validate_public_key(public_key)
        with self._lock:
            check_one_key_per_address(key, routes, self._routed())
            self._routes[key] = tuple(routes)
            config = self._configs.get(key)
            if config is not None:
                self._apply(config)

    def _routed(self) -> dict[str, tuple[str, ...]]:
        """Every key's addresses on the interface, as last asked (its own and its routes)."""
        keys = set(self._configs) | set(self._routes)
        return {key: (*(self._configs[key].allowed_ips if key in self._configs else ()),
                      *self._routes.get(key, ())) for key in keys}

    def _with_routes(self, public_key: str, allowed_ips: Sequence[str]) -> list[str]:
        own = list(allowed_ips)
        return own + [route for route in self._routes.get(public_key, ()) if route not in own]

    def peer_stats(self) -> dict[str, PeerStats]:
        with self._stats_lock:
            now = time.monotonic()
            if self._stats is None or now - self._stats[0] > STATS_SHARED_S:
                self._stats = (now, self._peers.peer_stats())
            return self._stats[1]


class NoNatDetector:
    def detect(self) -> NatInfo | None:
        return None


@dataclass(frozen=True)
class KnownNatDetector:
    """The agent's one detection at start, handed to every actor process.

    A STUN run per actor process cost 1.2-2.4 s on the join path (a new party actor is a
    new process), and repeated runs from the WireGuard port disagreed: the conntrack
    entries of the first run let the next see a port-restricted NAT as full cone.
    """

    info: NatInfo | None

    def detect(self) -> NatInfo | None:
        return self.info


def _ticket_source(agent: Agent) -> Any:
    """Relay tickets from the agent's own control session (its asyncio loop), for I/O workers."""

    def tickets(party_id: str, peer_id: str, relay: str, failed_session: str | None = None) -> RelayTicket:
        loop = agent.loop
        if loop is None:
            raise MeshError("no relay ticket: the agent is not serving yet")
        future = asyncio.run_coroutine_threadsafe(
            agent.relay_ticket(party_id, peer_id, relay, failed_session), loop)
        try:
            return RelayTicket(**future.result(timeout=TICKET_TIMEOUT_S))
        except TimeoutError:
            future.cancel()
            raise MeshError(f"no relay ticket from the control plane within {TICKET_TIMEOUT_S:.0f} s"
                            ) from None
        except Exception as error:  # a ServiceError or a malformed ticket
            raise MeshError(f"no relay ticket: {error}") from None

    return tickets


# A ticket is one control-plane round trip; past this the relay is not worth waiting for.
TICKET_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RealAdapters:
    wireguard: UapiWireGuard
    prober: IcmpProber
    puncher: UdpHolePuncher
    relay_client: ProxyRelayClient
    nat_detector: Any
    interface: InterfaceOwner


def nat_detector(stun: Sequence[str], listen_port: int, node_id: str) -> Any:
    if not stun:
        return NoNatDetector()
    from mesh.nat.stun import StunNatDetector

    return StunNatDetector(list(stun), local_port=listen_port, node_id=node_id)


def mapping_detector(stun: Sequence[str], listen_port: int, node_id: str) -> Any:
    """What looks at the WireGuard port's public mapping again (``mapping()``), or None."""
    detector = nat_detector(stun, listen_port, node_id)
    return detector if hasattr(detector, "mapping") else None


def puncher(listen_port: int, info: NatInfo | None, key_file: str = "") -> UdpHolePuncher:
    """mesh/nat's coordinated puncher: PUNCH/ACK from WireGuard's own port.

    With the node's key file, every punch session is keyed by the X25519 agreement of
    the two peers' WireGuard keys, so nobody else can confirm a path.
    """
    private_key = load_private_key(Path(key_file)) if key_file else None
    return UdpHolePuncher(listen_port, nat=info, private_key=private_key)


def real_adapters(agent: Agent) -> RealAdapters:
    """The real adapters of ``agent``: its interface, its NAT detection, its tickets."""
    config = agent.config
    owner = agent.interface
    assert owner is not None
    return RealAdapters(
        wireguard=UapiWireGuard(config.interface, agent.identity.public_key, config.listen_port,
                                str(agent.state_dir)),
        prober=IcmpProber(config.interface),
        puncher=puncher(config.listen_port, agent.nat, str(agent.state_dir / "wireguard.key")),
        relay_client=ProxyRelayClient(_ticket_source(agent), wg_port=config.listen_port),
        nat_detector=KnownNatDetector(agent.nat),
        interface=owner)
