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

from actors.adapters import register_adapters
from actors.messages import AdapterSpec
from mesh.interfaces import MeshError, NatInfo, PeerStats
from mesh.keys import load_private_key
from mesh.nat.punch import UdpHolePuncher
from mesh.relay.client import ProxyRelayClient
from mesh.relay.tickets import RelayTicket
from mesh.wireguard import PeerConfig, PeerController, WireGuardInterface
from mesh.wireguard.probe import IcmpProber

if TYPE_CHECKING:
    from agent.node import Agent

SIM = "mesh.sim:adapters"
REAL = "agent.adapters:real"


def adapter_spec(agent: Agent) -> AdapterSpec:
    """The spec the node actor's edge builds its adapters from (real ones: registered here)."""
    config = agent.config
    if config.adapters == SIM:
        return AdapterSpec.of(SIM, network_name=agent.node_id, node=agent.node_id,
                              public_key=agent.identity.public_key, listen_port=config.listen_port)
    if config.adapters == REAL:
        return register_adapters(agent.node_id, real_adapters(agent))
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

    def assign(self, virtual_ip: str) -> str:
        """``mesh.interfaces.LocalInterface``: the interface holds ``virtual_ip``; its name."""
        self.ensure(virtual_ip)
        return self.agent.config.interface

    def ensure(self, virtual_ip: str) -> None:
        """The interface exists and holds ``virtual_ip`` (one address per party the node is in)."""
        ipaddress.ip_address(virtual_ip)
        config = self.agent.config
        if self.interface is None:
            self.interface = WireGuardInterface.create(
                self.agent.private_key, f"{virtual_ip}/16", name=config.interface,
                listen_port=config.listen_port, state_dir=self.agent.state_dir)
            self.addresses.add(virtual_ip)
        if virtual_ip in self.addresses:
            return
        done = subprocess.run(["ip", "address", "add", f"{virtual_ip}/32", "dev", config.interface],
                              capture_output=True, text=True, timeout=10)
        if done.returncode != 0 and "exists" not in done.stderr:
            raise MeshError(f"cannot add {virtual_ip} to {config.interface}: {done.stderr.strip()}")
        self.addresses.add(virtual_ip)

    def close(self) -> None:
        if self.interface is not None:
            self.interface.close(remove=True)
            self.interface = None


# ---------------------------------------------------------------- actor-side adapters


STAGGER_S = 0.1
# The connections read WireGuard's counters on their own timers (once a second when idle):
# reads within this of each other share one UAPI call.
STATS_SHARED_S = 0.2


class UapiWireGuard:
    """``mesh.interfaces.WireGuard`` over the UAPI socket of the agent's interface.

    Both sides configure each other at about the same moment (both dial). If their
    handshake initiations cross, each side discards the other's and nothing moves until
    WireGuard's 5 s retry (docs/nat-relay.md measured it). So on a new endpoint the side
    with the smaller public key waits ``STAGGER_S`` (more than a round trip in the lab):
    the first initiation then meets a configured peer and completes.
    """

    def __init__(self, name: str, public_key: str, listen_port: int, state_dir: str = "") -> None:
        self._name = name
        self._state_dir = Path(state_dir) if state_dir else None
        self._controller: PeerController | None = None
        self._public_key = public_key
        self._listen_port = listen_port
        self._endpoints: dict[str, str | None] = {}
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
        if config.endpoint is not None and self._endpoints.get(public_key) != config.endpoint \
                and self._public_key < public_key:
            time.sleep(STAGGER_S)
        self._peers.configure_peer(public_key, endpoint, allowed_ips, keepalive_s)
        self._endpoints[public_key] = config.endpoint
        self._stats = None

    def remove_peer(self, public_key: str) -> None:
        self._peers.remove_peer(public_key)
        self._endpoints.pop(public_key, None)
        self._stats = None

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
