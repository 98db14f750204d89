"""What an actor asks the edge to do, and the answer it gets back.

Actors never touch the network: they persist their decision, send one of these
requests to the edge actor (actors/edge.py), and go on with other messages. The
edge performs the request on an I/O worker (or at once, in deterministic tests)
and answers the requester with ``EffectDone``, which carries the request back so
the actor can tell a current answer from a stale one by its ``tag``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.interfaces import MeshError, PunchResult, RelayAllocation, RelaySessionFailed


@dataclass(frozen=True, kw_only=True)
class Effect:
    tag: str = ""  # the requester's token: which operation of its own this answers

    @property
    def serial_key(self) -> str | None:
        """Requests with the same key run one after another, in order (None: in parallel)."""
        return None


@dataclass(frozen=True, kw_only=True)
class ConfigurePeer(Effect):
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive_s: int = 25

    @property
    def serial_key(self) -> str | None:
        return f"wireguard/{self.public_key}"


@dataclass(frozen=True, kw_only=True)
class RemovePeer(Effect):
    public_key: str

    @property
    def serial_key(self) -> str | None:
        return f"wireguard/{self.public_key}"


@dataclass(frozen=True, kw_only=True)
class ReadPeerStats(Effect):
    """Value: the peer's ``mesh.interfaces.PeerStats``, or None when WireGuard has no such peer."""

    public_key: str


@dataclass(frozen=True, kw_only=True)
class ReadAllPeerStats(Effect):
    """Value: every WireGuard peer's ``mesh.interfaces.PeerStats``, by public key (one read)."""


@dataclass(frozen=True, kw_only=True)
class Punch(Effect):
    """Value: ``mesh.interfaces.PunchResult`` (a failed punch is a result, not an error)."""

    session: str
    candidates: tuple[str, ...]
    timeout_s: float
    peer_public_key: str


@dataclass(frozen=True, kw_only=True)
class Probe(Effect):
    """Value: the round trip in ms through the tunnel, or None when lost."""

    virtual_ip: str
    timeout_s: float


@dataclass(frozen=True, kw_only=True)
class AllocateRelay(Effect):
    """Value: ``mesh.interfaces.RelayAllocation``."""

    party_id: str
    peer_id: str
    relay: str
    failed_session: str | None = None  # the session this side saw fail: the new one must differ


@dataclass(frozen=True, kw_only=True)
class ReleaseRelay(Effect):
    allocation: RelayAllocation


@dataclass(frozen=True, kw_only=True)
class CheckRelaySession(Effect):
    """Value: whether the relay client still holds the session (a new process does not)."""

    allocation: RelayAllocation


@dataclass(frozen=True, kw_only=True)
class ProbeRelay(Effect):
    """Value: the round trip to the relay in ms, or None when it did not answer."""

    relay: str
    timeout_s: float


@dataclass(frozen=True, kw_only=True)
class DetectNat(Effect):
    """Value: (``NatInfo`` or None, this node's candidate endpoints)."""


@dataclass(frozen=True, kw_only=True)
class AssignLocalAddress(Effect):
    """Value: the interface name once ``virtual_ip`` is on it."""

    virtual_ip: str


@dataclass(frozen=True, kw_only=True)
class CheckLocalAddress(Effect):
    """Fails (with the cause) unless ``virtual_ip`` is on a working interface now."""

    virtual_ip: str


@dataclass(frozen=True, kw_only=True)
class ServeStaticDevice(Effect):
    """The routing member takes a static device: IP forwarding on, and the device as a
    WireGuard peer with its /32 (no endpoint and no keepalive: the device dials in)."""

    public_key: str
    virtual_ip: str

    @property
    def serial_key(self) -> str | None:
        return f"wireguard/{self.public_key}"


@dataclass(frozen=True, kw_only=True)
class RouteThroughPeer(Effect):
    """The static devices' /32s that go through the member with ``public_key`` (all of them:
    an empty tuple removes the routes), beside that member's own allowed IPs."""

    public_key: str
    routes: tuple[str, ...]

    @property
    def serial_key(self) -> str | None:
        return f"wireguard/{self.public_key}"


def _serve_static_device(adapters: Any, effect: ServeStaticDevice) -> None:
    adapters.interface.enable_forwarding()
    adapters.wireguard.configure_peer(effect.public_key, None, (f"{effect.virtual_ip}/32",), 0)


@dataclass(frozen=True)
class EffectDone:
    effect: Effect
    value: Any = None  # on a failed AllocateRelay: the RelayAllocation that could not be opened, if any
    error: str | None = None  # the MeshError's message when the effect failed

    @property
    def ok(self) -> bool:
        return self.error is None


def perform(adapters: Any, effect: Effect) -> EffectDone:
    """Run one effect against the adapters (blocking); a MeshError becomes ``error``."""
    run = _RUNNERS.get(type(effect))
    if run is None:
        return EffectDone(effect, error=f"{type(effect).__name__} is not an effect the edge knows")
    try:
        return EffectDone(effect, run(adapters, effect))
    except RelaySessionFailed as error:
        # Which session failed: the next request reports it, so it is never handed back.
        return EffectDone(effect, RelayAllocation(error.relay, error.session_id, ""), str(error))
    except MeshError as error:
        return EffectDone(effect, error=str(error) or type(error).__name__)
    except Exception as error:  # an adapter bug: the actor still gets its answer, as a failure
        return EffectDone(effect, error=f"{type(error).__name__}: {error}")


def _punch(adapters: Any, effect: Punch) -> Any:
    try:
        return adapters.puncher.punch(effect.session, effect.candidates, effect.timeout_s,
                                      peer_public_key=effect.peer_public_key)
    except MeshError as error:
        return PunchResult(False, None, None, 0.0, str(error))


_RUNNERS: dict[type[Effect], Callable[[Any, Any], Any]] = {
    ConfigurePeer: lambda a, e: a.wireguard.configure_peer(e.public_key, e.endpoint, e.allowed_ips,
                                                           e.keepalive_s),
    RemovePeer: lambda a, e: a.wireguard.remove_peer(e.public_key),
    ReadPeerStats: lambda a, e: a.wireguard.peer_stats().get(e.public_key),
    ReadAllPeerStats: lambda a, e: dict(a.wireguard.peer_stats()),
    Punch: _punch,
    Probe: lambda a, e: a.prober.probe(e.virtual_ip, e.timeout_s),
    AllocateRelay: lambda a, e: a.relay_client.allocate(e.party_id, e.peer_id, e.relay,
                                                        failed_session=e.failed_session),
    ReleaseRelay: lambda a, e: a.relay_client.release(e.allocation),
    CheckRelaySession: lambda a, e: a.relay_client.holds(e.allocation),
    ProbeRelay: lambda a, e: a.relay_client.probe(e.relay, e.timeout_s),
    DetectNat: lambda a, e: (a.nat_detector.detect(), tuple(a.puncher.candidates())),
    AssignLocalAddress: lambda a, e: a.interface.assign(e.virtual_ip),
    CheckLocalAddress: lambda a, e: a.interface.check(e.virtual_ip),
    ServeStaticDevice: _serve_static_device,
    RouteThroughPeer: lambda a, e: a.wireguard.set_routes(e.public_key, e.routes),
}
