"""The peer-connection actor: one thespian actor per remote peer of a party.

States: connecting -> connected <-> degraded; lost probes -> failover to a relay
(direct path) or reconnect attempts (at most ``max_reconnect_attempts``) -> failed
-> cleanup after ``cleanup_timeout_s``; closed when the peer leaves. The path is
direct (hole punched) or relay, with a periodic retry of the direct path that
upgrades back to direct.

Every message follows persist, then apply, then act: the decision yields events,
the store acknowledges them, they are folded with ``events.fold.apply_connection``,
and only then is an effect sent to the edge (actors/edge.py). The actor never waits:
the edge's answer (``EffectDone``) is another message, whose outcome is persisted
before anything follows from it. Intent and outcome are both in the log:
``RelayAllocationRequested`` -> ``RelaySessionOpened``/``RelayAllocationFailed``,
``HolePunchAttempted`` -> ``HolePunchSucceeded``/``HolePunchFailed``,
``WireGuardPeerConfigRequested`` -> ``WireGuardPeerConfigured``/``WireGuardPeerChangeFailed``
(a failed change is tried again with backoff until WireGuard matches the log).

At most one *operation* (a connect attempt, a failover, a relay move, a direct retry)
runs at a time; its effects carry its tag, and an answer for an older operation is
recorded for what it is and otherwise ignored.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from thespian.actors import (
    Actor,
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

from actors import effects as fx
from actors import logs
from actors import messages as m
from actors.journal import StreamWriter, open_recorder
from actors.logs import logger
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import ConnectionState, apply_connection
from events.streams import peer_stream
from mesh.interfaces import PeerStats, PunchResult, RelayAllocation
from mesh.nat.punch import should_try_direct

ACTIVE = (ev.CONNECTING, ev.CONNECTED, ev.DEGRADED, ev.FAILED)
UP = (ev.CONNECTED, ev.DEGRADED)

MONITOR, METRICS, DIRECT_RETRY, CLEANUP, WIREGUARD_RETRY = (
    "monitor", "metrics", "direct-retry", "cleanup", "wireguard-retry")

# Operation kinds (one at a time) and the purposes of relay allocations.
CONNECT, FAILOVER, RELAY_MOVE, RETRY_DIRECT = "connect", "failover", "relay-move", "direct-retry"
RELAY_FIRST, FALLBACK = "relay first", "fallback"


def invalid_observation(item: Any) -> str | None:
    """Why an observation cannot be used, or None when it is fine."""
    if isinstance(item, m.LatencyObserved):
        value = item.latency_ms
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"latency_ms is {type(value).__name__}, not a number"
        if not math.isfinite(value) or value < 0 or value > 60_000:
            return f"latency_ms {value!r} is out of range"
        return None
    if isinstance(item, m.ProbeFailed):
        return None if isinstance(item.reason, str) else "reason is not text"
    if isinstance(item, m.TrafficObserved):
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                 for v in (item.rx_bytes, item.tx_bytes))
        return None if ok else "byte counters must be non-negative integers"
    return f"{type(item).__name__} is not an observation"


@dataclass
class Operation:
    """The one multi-step operation in flight (memory only: a restart settles it from the log)."""

    kind: str
    tag: str
    attempt: int = 0
    relay_first: bool = False  # connect: on the relay while the punch runs
    purpose: str = ""
    rtt_ms: float | None = None  # relay move: the new relay's round trip, as the monitor measured


@dataclass
class Probing:
    """Derived and ephemeral: the probe counters and the current metrics window.

    They describe the last seconds of one incarnation; what the log keeps of them is
    the aggregated ``MetricsSampled`` and the transitions they caused.
    """

    # Consecutive lost probes, each weighted by its interval over ``probe_interval_s``: a
    # connecting connection probes every ``first_probe_s`` (it answers as soon as the
    # tunnel does), and thirty lost quick probes weigh what three normal ones do.
    lost: float = 0.0
    armed_weight: float = 1.0  # of the probe the armed timer will send
    sent_weight: float = 1.0  # of the probe in flight
    in_flight: bool = False
    window: list[float] = field(default_factory=list)
    window_lost: int = 0
    last_error: str = ""  # of the window's last lost probe, when the prober gave one
    traffic: tuple[int, int] = (0, 0)
    history: str = ""  # the last probe outcomes, oldest first: "+" answered, "-" lost, "~" endpoint moved
    stats: PeerStats | None = None  # WireGuard's counters for the peer, at the last reading
    watching: str | None = None  # the decided endpoint when the reading in flight was asked for


class PeerConnectionActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init: m.PeerInit | None = None
        self.parent: ActorAddress | None = None
        self.state = ConnectionState()
        self.log = logger
        self.relay: str | None = None  # the node's selected relay, as the party last said
        self.op: Operation | None = None
        self.probing = Probing()
        self.closing = False
        self.finished = False
        self.pending: set[str] = set()  # tags of effects not answered yet
        self.wireguard_retry_s = 0.0
        self._tags = itertools.count(1)
        self._notified: ConnectionState | None = None

    # ------------------------------------------------------------ thespian

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ActorExitRequest | ChildActorExited):
            return
        if isinstance(message, m.PeerInit):
            if self.init is None:
                logs.configure(message.log)
                self.init, self.parent = message, sender
                self._guard(self.start)
            return
        if self.init is None:
            logger.warning("peer connection got {} before PeerInit; dropped", type(message).__name__)
            return
        if isinstance(message, PoisonMessage):
            self.log.error("a message failed twice: {}", type(message.poisonMessage).__name__)
            return
        self._guard(lambda: self.handle(message))

    def _guard(self, call: Any) -> None:
        """An exception rebuilds the connection from its stream instead of a thespian retry
        (the message's events may be stored already)."""
        try:
            call()
        except Exception as error:
            self.log.exception("peer connection crashed; rebuilding it from its stream")
            self._rebuild(f"{type(error).__name__}: {error}")
        self._notify()

    def _rebuild(self, reason: str) -> None:
        assert self.init is not None
        self.op, self.probing, self.pending = None, Probing(), set()
        self.init = replace(self.init, restarted=reason)
        self.start()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Replay the stream; settle what a crash interrupted; connect, or resume."""
        init = self.init
        assert init is not None
        self.cfg = init.config.connection
        self.edge = init.edge
        self.relay = init.relay
        self.incarnation = new_incarnation()
        self.timers = Timers(self.incarnation)
        self.actor = f"peer-connection/{init.party_id}/{init.peer_id}"
        self.log = logger.bind(actor=self.actor)
        stream = peer_stream(init.node_id, init.party_id, init.peer_id)
        self.writer = StreamWriter(open_recorder(init.store), stream, self.incarnation,
                                   {"node_id": init.node_id, "actor": self.actor})
        self.state = self.writer.replay(apply_connection, ConnectionState())
        settle: list[Event] = []
        if init.restarted and self.writer.position:
            settle.append(ev.ActorRestarted(actor=self.actor, reason=init.restarted))
        if self.state.punching:
            settle.append(ev.HolePunchFailed(**self._base(), reason="interrupted: the connection restarted",
                                             elapsed_ms=0.0))
        if self.state.allocating:
            settle.append(ev.RelayAllocationFailed(**self._base(), relay=self.state.allocating,
                                                   error="interrupted: the connection restarted"))
        remote = self._remote_update(init.candidates, init.remote_nat_type)
        if remote is not None:
            settle.append(remote)
        self._commit(settle, "start")
        if init.close_reason is not None:
            self.close(init.close_reason)
            return
        if self.state.state in (None, ev.CLOSED):  # a new peer, or one that left and came back
            self._commit([self._transition(ev.CONNECTING, "peer joined the party")], "start")
            self._connect(1)
        elif self.state.state in ACTIVE:
            self.log.info("recovered {} from {} events", self.state.state, self.writer.position)
            self._request(fx.ReadPeerStats(tag="reconcile", public_key=init.public_key))
            if self.state.state == ev.CONNECTING and not self.state.wireguard_configured:
                self._connect(max(self.state.attempt, 1))
            elif self.state.path == ev.RELAY and self.state.state != ev.FAILED and (held := self._held()):
                self._request(fx.CheckRelaySession(tag="check-session", allocation=held))
            if self.state.state == ev.FAILED:
                self._schedule(self.cfg.cleanup_timeout_s, CLEANUP)
        if self.state.state in ACTIVE:
            self._arm_monitor()
            self._schedule(self.cfg.metrics_interval_s, METRICS)
            self._arm_direct_retry()

    def handle(self, message: Any) -> None:
        match message:
            case fx.EffectDone():
                self.on_done(message)
            case WakeupMessage(payload=m.Timer() as timer):
                self.on_timer(timer)
            case WakeupMessage():
                pass
            case m.Observations(items=tuple() | list() as items):
                self.on_observations(items, "observations")
            case m.Observations():
                self.reject("Observations", "items must be a sequence of observations")
            case m.PeerAnnounced():
                self.on_announced(message.candidates, message.nat_type, announced=True)
            case m.RemoteCandidates():
                self.on_announced(message.candidates, self.state.remote_nat_type, announced=False)
            case m.RelayChanged():
                self.on_relay_changed(message)
            case m.ClosePeer():
                self.close(message.reason)
            case _:
                self.reject(type(message).__name__, "unknown message for a peer connection")

    def reject(self, message_type: str, reason: str) -> None:
        self.log.warning("rejected {}: {}", message_type, reason)
        self._commit([ev.MessageRejected(actor=self.actor, message_type=message_type, reason=reason)],
                     f"reject {message_type}")

    # ------------------------------------------------------------ persist, apply, act

    def _commit(self, events: Sequence[Event], causation: str) -> None:
        """Persist, then fold the stored records; every effect follows from ``self.state``."""
        for record in self.writer.append(events, causation):
            self.state = apply_connection(self.state, record.event)
        for event in events:
            if isinstance(event, ev.WireGuardPeerConfigRequested | ev.WireGuardPeerRemovalRequested):
                self._apply_wireguard()

    def _request(self, effect: fx.Effect) -> None:
        self.pending.add(effect.tag)
        self.send(self.edge, effect)

    def _apply_wireguard(self) -> None:
        """Make WireGuard match the last decision (configure, or remove)."""
        assert self.init is not None
        if self.state.wireguard_configured:
            self._request(fx.ConfigurePeer(tag="wireguard", public_key=self.init.public_key,
                                           endpoint=self.state.endpoint, allowed_ips=self._allowed_ips,
                                           keepalive_s=self.cfg.keepalive_s))
        else:
            self._request(fx.RemovePeer(tag="wireguard", public_key=self.init.public_key))

    def _schedule(self, delay_s: float, kind: str) -> None:
        self.wakeupAfter(timedelta(seconds=delay_s), self.timers.arm(kind))

    def _notify(self) -> None:
        if self.init is not None and self.state != self._notified and self.parent is not None:
            self._notified = self.state
            self.send(self.parent, m.ConnectionUpdate(self.init.peer_id, self.state))

    @property
    def _allowed_ips(self) -> tuple[str, ...]:
        assert self.init is not None
        return (f"{self.init.virtual_ip}/32",)

    # ------------------------------------------------------------ event helpers

    def _base(self) -> dict[str, str]:
        assert self.init is not None
        return {"party_id": self.init.party_id, "peer_id": self.init.peer_id}

    def _transition(self, to_state: str, reason: str, latency_ms: float | None = None,
                    state: ConnectionState | None = None) -> ev.ConnectionStateChanged:
        state = state or self.state
        setback = to_state in (ev.DEGRADED, ev.FAILED) or (state.state in UP and to_state not in UP
                                                             and to_state not in (ev.CLOSED, ev.CLEANUP))
        return ev.ConnectionStateChanged(
            **self._base(), from_state=state.state, to_state=to_state, reason=reason,
            path=state.path, endpoint=state.endpoint, relay=state.relay, latency_ms=latency_ms,
            **(self._tunnel_evidence() if setback else {}))

    def _tunnel_evidence(self) -> dict[str, Any]:
        """What a setback records of the tunnel: WireGuard's handshake age and the recent probes."""
        stats = self.probing.stats
        handshake = stats.last_handshake if stats else None
        age = round(max(0.0, time.time() - handshake), 1) if handshake else None
        return {"last_handshake_age_s": age, "recent_probes": self.probing.history}

    def _configure(self, endpoint: str | None) -> ev.WireGuardPeerConfigRequested:
        assert self.init is not None
        return ev.WireGuardPeerConfigRequested(**self._base(), public_key=self.init.public_key,
                                               endpoint=endpoint, allowed_ips=self._allowed_ips,
                                               keepalive_s=self.cfg.keepalive_s)

    def _reconnect(self, attempt: int, reason: str, state: ConnectionState | None = None) -> list[Event]:
        max_attempts = self.cfg.max_reconnect_attempts
        return [ev.ReconnectAttempted(**self._base(), attempt=attempt, max_attempts=max_attempts,
                                      reason=reason),
                self._transition(ev.CONNECTING, f"reconnect attempt {attempt}/{max_attempts}: {reason}",
                                 state=state)]

    def _remote_update(self, candidates: Sequence[str], nat_type: str) -> ev.RemotePeerUpdated | None:
        candidates = tuple(candidates) or self.state.candidates
        nat_type = nat_type if nat_type != ev.NAT_UNKNOWN else self.state.remote_nat_type
        if (candidates, nat_type) == (self.state.candidates, self.state.remote_nat_type):
            return None
        return ev.RemotePeerUpdated(**self._base(), candidates=candidates, nat_type=nat_type)

    # ------------------------------------------------------------ operations

    def _begin(self, kind: str, **fields: Any) -> Operation:
        self.op = Operation(kind, f"{kind}/{next(self._tags)}", **fields)
        return self.op

    def _current(self, done: fx.EffectDone) -> bool:
        return self.op is not None and done.effect.tag == self.op.tag and not self.closing

    def _direct_ruled_out(self) -> str | None:
        """Why a punch is not worth trying, or None: always try direct unless both are symmetric."""
        assert self.init is not None
        if not self.state.candidates:
            return "no direct candidates"
        if not should_try_direct(self.init.local_nat_type, self.state.remote_nat_type):
            return "both sides are behind symmetric NATs"
        return None

    def _direct_likely(self) -> bool:
        """One side open or port-forwarded: the punch all but always works (the NAT matrix)."""
        assert self.init is not None
        easy = (ev.NAT_OPEN, ev.NAT_FULL_CONE)
        return self.init.local_nat_type in easy or self.state.remote_nat_type in easy

    def _connect(self, attempt: int) -> None:
        ruled_out = self._direct_ruled_out()
        if ruled_out is not None:
            op = self._begin(CONNECT, attempt=attempt, purpose=ruled_out)
            self._commit([ev.ConnectionAttemptStarted(**self._base(), attempt=attempt, path=ev.RELAY)],
                         op.tag)
            self._allocate(op, FALLBACK)
            return
        started = ev.ConnectionAttemptStarted(**self._base(), attempt=attempt, path=ev.DIRECT)
        if self.cfg.relay_first and self.relay is not None and not self._direct_likely():
            op = self._begin(CONNECT, attempt=attempt, relay_first=True)
            self._commit([started], op.tag)
            self._allocate(op, RELAY_FIRST)
            return
        op = self._begin(CONNECT, attempt=attempt)
        self._commit([started], op.tag)
        self._punch(op)

    def _punch(self, op: Operation) -> None:
        assert self.init is not None
        self._commit([ev.HolePunchAttempted(**self._base(), local_candidates=self.init.local_candidates,
                                            remote_candidates=self.state.candidates)], op.tag)
        ends = sorted((self.init.local_peer_id, self.init.peer_id))
        number = op.attempt if op.kind == CONNECT else self.state.direct_retries + 1000
        self._request(fx.Punch(tag=op.tag, session=f"{self.init.party_id}:{ends[0]}:{ends[1]}:{number}",
                               candidates=self.state.candidates, timeout_s=self.cfg.punch_timeout_s,
                               peer_public_key=self.init.public_key))

    def _allocate(self, op: Operation, purpose: str, relay: str | None = None) -> None:
        relay = relay or self.relay
        if relay is None:
            self._no_path(op, "no relay is known")
            return
        op.purpose = op.purpose or purpose
        self._commit([ev.RelayAllocationRequested(**self._base(), relay=relay, purpose=purpose)], op.tag)
        self._request(fx.AllocateRelay(tag=op.tag, party_id=self._base()["party_id"],
                                       peer_id=self._base()["peer_id"], relay=relay))

    def _no_path(self, op: Operation, why_no_relay: str) -> None:
        reason = f"{op.purpose}; {why_no_relay}" if op.purpose else why_no_relay
        self.log.warning("no path to the peer: {}", reason)
        self._commit([ev.NoPathAvailable(**self._base(), reason=reason)], op.tag)
        self._finish(op)

    def _finish(self, op: Operation) -> None:
        if self.op is op:
            self.op = None

    def _held(self) -> RelayAllocation | None:
        """The relay session this connection holds, as its log says."""
        if self.state.session_id is None or self.state.session_relay is None:
            return None
        return RelayAllocation(self.state.session_relay, self.state.session_id,
                               self.state.session_endpoint or "")

    def _release(self, tag: str, allocation: RelayAllocation | None = None) -> None:
        """Give back ``allocation``, by default the session this connection holds."""
        allocation = allocation or self._held()
        if allocation is not None:
            self._request(fx.ReleaseRelay(tag=f"release/{tag}", allocation=allocation))

    def _release_if_replaced(self, previous: RelayAllocation | None, tag: str) -> None:
        held = self._held()
        if previous is not None and (held is None or (previous.relay, previous.session_id)
                                     != (held.relay, held.session_id)):
            self._release(tag, previous)

    # ------------------------------------------------------------ effect outcomes

    def on_done(self, done: fx.EffectDone) -> None:
        self.pending.discard(done.effect.tag)
        match done.effect:
            case fx.ConfigurePeer() | fx.RemovePeer():
                self._on_wireguard(done)
            case fx.AllocateRelay():
                self._on_allocated(done)
            case fx.Punch():
                self._on_punched(done)
            case fx.ReleaseRelay(allocation=allocation):
                self._commit([ev.RelaySessionReleased(**self._base(), relay=allocation.relay,
                                                      session_id=allocation.session_id,
                                                      error=done.error or "")], done.effect.tag)
            case fx.Probe():
                self.probing.in_flight = False
                if not self.closing:
                    self._on_probed(done)
            case fx.CheckRelaySession():
                if not (done.ok and done.value) and not self.closing and self.state.path == ev.RELAY:
                    # A new process: the session lived in the previous one. Open a new one.
                    self._move_relay(self.state.relay or self.relay,
                                     "restore the relay session after a restart")
            case fx.ReadPeerStats(tag="watch"):
                self._watched(done.value if done.ok else None)
            case fx.ReadPeerStats(tag="reconcile"):
                self._reconcile(done.value if done.ok else None)
            case fx.ReadPeerStats(tag="metrics"):
                self._sample_metrics(done.value if done.ok else None)
        if self.closing and not self.pending:
            self._finished()

    def _on_wireguard(self, done: fx.EffectDone) -> None:
        assert self.init is not None
        effect = done.effect
        configuring = isinstance(effect, fx.ConfigurePeer)
        if done.ok:
            self.wireguard_retry_s = 0.0
            if configuring:
                assert isinstance(effect, fx.ConfigurePeer)
                outcome: Event = ev.WireGuardPeerConfigured(
                    **self._base(), public_key=effect.public_key, endpoint=effect.endpoint,
                    allowed_ips=effect.allowed_ips, keepalive_s=effect.keepalive_s)
            else:
                outcome = ev.WireGuardPeerRemoved(**self._base(), public_key=self.init.public_key,
                                                  reason="as decided")
            self._commit([outcome], "wireguard")
            return
        operation = "configure" if configuring else "remove"
        self.log.error("WireGuard {} failed: {}", operation, done.error)
        if self.state.wireguard_error != done.error or self.wireguard_retry_s == 0.0:
            self._commit([ev.WireGuardPeerChangeFailed(**self._base(), public_key=self.init.public_key,
                                                       operation=operation, error=done.error or "")],
                         "wireguard")
        self.wireguard_retry_s = min(max(self.wireguard_retry_s * 2, self.cfg.wireguard_retry_s),
                                     self.cfg.wireguard_retry_max_s)
        self._schedule(self.wireguard_retry_s, WIREGUARD_RETRY)

    def _on_allocated(self, done: fx.EffectDone) -> None:
        effect = done.effect
        assert isinstance(effect, fx.AllocateRelay)
        if not done.ok:
            self.log.warning("relay {} allocation failed: {}", effect.relay, done.error)
            self._commit([ev.RelayAllocationFailed(**self._base(), relay=effect.relay,
                                                   error=done.error or "")], effect.tag)
            if self._current(done):
                self._after_allocation_failed(done.error or "")
            return
        allocation: RelayAllocation = done.value
        previous = self._held()
        opened = ev.RelaySessionOpened(**self._base(), relay=allocation.relay,
                                       session_id=allocation.session_id, endpoint=allocation.endpoint)
        if not self._current(done):
            # The operation is over (closed, or a restart settled it): give the session back.
            self._commit([opened], effect.tag)
            self._release("unused")
            return
        op = self.op
        assert op is not None
        if op.kind == CONNECT and op.relay_first:
            self._commit([opened,
                          ev.PathChosen(**self._base(), path=ev.RELAY,
                                        reason="relay first while the hole punch runs",
                                        endpoint=allocation.endpoint, relay=allocation.relay),
                          self._configure(allocation.endpoint)], op.tag)
            self._release_if_replaced(previous, op.tag)
            self._punch(op)
            return
        if op.kind == CONNECT:
            self._commit([opened,
                          ev.PathChosen(**self._base(), path=ev.RELAY, reason=op.purpose,
                                        endpoint=allocation.endpoint, relay=allocation.relay),
                          self._configure(allocation.endpoint)], op.tag)
        elif op.kind == FAILOVER:
            self._commit([opened,
                          ev.PathSwitched(**self._base(), from_path=ev.DIRECT, to_path=ev.RELAY,
                                          reason=op.purpose, endpoint=allocation.endpoint,
                                          to_relay=allocation.relay, from_latency_ms=self.state.latency_ms),
                          self._configure(allocation.endpoint)], op.tag)
        else:  # RELAY_MOVE
            self._commit([opened,
                          ev.PathSwitched(**self._base(), from_path=ev.RELAY, to_path=ev.RELAY,
                                          reason=op.purpose, endpoint=allocation.endpoint,
                                          from_relay=self.state.relay, to_relay=allocation.relay,
                                          from_latency_ms=self.state.latency_ms, to_latency_ms=op.rtt_ms),
                          self._configure(allocation.endpoint)], op.tag)
        self._release_if_replaced(previous, op.tag)
        self._finish(op)
        self._arm_direct_retry()

    def _after_allocation_failed(self, error: str) -> None:
        op = self.op
        assert op is not None
        if op.kind == CONNECT and op.relay_first:
            op.relay_first = False  # punch first as if no relay were at hand
            self._punch(op)
        elif op.kind == CONNECT:
            self._no_path(op, f"relay allocation failed: {error}")
        elif op.kind == FAILOVER:
            self._finish(op)
            self._commit(self._reconnect(1, f"{op.purpose}; relay allocation failed: {error}"), "failover")
            self._connect(2)
        else:
            self._finish(op)

    def _on_punched(self, done: fx.EffectDone) -> None:
        result: PunchResult = done.value if done.ok else PunchResult(False, None, None, 0.0, done.error or "")
        op = self.op
        current = self._current(done) and op is not None
        succeeded = bool(result.succeeded and result.endpoint)
        if op is not None and op.kind == RETRY_DIRECT and current:
            self._on_retried(op, result, succeeded)
            return
        if not succeeded:
            self._commit([ev.HolePunchFailed(**self._base(), reason=result.reason,
                                             elapsed_ms=result.elapsed_ms)], done.effect.tag)
            if not current:
                return
            assert op is not None
            if op.relay_first:
                self._finish(op)
                self._arm_direct_retry()
            else:
                op.purpose = f"hole punch failed: {result.reason}"
                self._allocate(op, FALLBACK)
            return
        assert result.endpoint is not None
        punched = ev.HolePunchSucceeded(**self._base(), endpoint=result.endpoint,
                                        rtt_ms=result.rtt_ms or 0.0, elapsed_ms=result.elapsed_ms)
        if not current:
            self._commit([punched], done.effect.tag)
            return
        assert op is not None
        if self.state.path == ev.RELAY:
            chosen: Event = ev.PathSwitched(
                **self._base(), from_path=ev.RELAY, to_path=ev.DIRECT, reason="hole punch succeeded",
                endpoint=result.endpoint, from_relay=self.state.relay,
                from_latency_ms=self.state.latency_ms, to_latency_ms=result.rtt_ms)
        else:
            chosen = ev.PathChosen(**self._base(), path=ev.DIRECT, reason="hole punch succeeded",
                                   endpoint=result.endpoint)
        self._commit([punched, chosen, self._configure(result.endpoint)], op.tag)
        self._release(op.tag)
        self._finish(op)

    def _on_retried(self, op: Operation, result: PunchResult, succeeded: bool) -> None:
        self._finish(op)
        if not succeeded:
            self._commit([ev.DirectPathRetried(**self._base(), succeeded=False, reason=result.reason)],
                         op.tag)
            self._arm_direct_retry()
            return
        assert result.endpoint is not None
        self._commit([
            ev.DirectPathRetried(**self._base(), succeeded=True, reason="hole punch succeeded"),
            ev.PathSwitched(**self._base(), from_path=ev.RELAY, to_path=ev.DIRECT,
                            reason="direct path works again", endpoint=result.endpoint,
                            from_relay=self.state.relay, from_latency_ms=self.state.latency_ms,
                            to_latency_ms=result.rtt_ms),
            self._configure(result.endpoint)], op.tag)
        self._release(op.tag)

    def _reconcile(self, actual: PeerStats | None) -> None:
        """After a restart: make WireGuard match the log, changing only what differs."""
        if self.state.wireguard_configured:
            if actual is None or actual.endpoint != self.state.endpoint or not self.state.wireguard_applied:
                self.log.info("reconcile: configuring the WireGuard peer as last decided")
                self._apply_wireguard()
        elif actual is not None:
            self.log.info("reconcile: removing a WireGuard peer that the log says is gone")
            self._apply_wireguard()

    # ------------------------------------------------------------ observations

    def _on_probed(self, done: fx.EffectDone) -> None:
        if not done.ok:
            item: m.Observation = m.ProbeFailed(done.error or "probe failed")
        elif done.value is None:
            item = m.ProbeFailed()
        else:
            item = m.LatencyObserved(float(done.value))
        self.on_observations([item], "probe", weight=self.probing.sent_weight)

    def on_observations(self, items: Sequence[Any], causation: str, weight: float = 1.0) -> None:
        events: list[Event] = []
        tentative = self.state
        failover = False
        for item in items:
            why = invalid_observation(item)
            decided: list[Event]
            if why is not None:
                self.log.warning("rejected observation {!r}: {}", item, why)
                decided = [ev.MessageRejected(actor=self.actor, message_type=type(item).__name__,
                                              reason=f"malformed observation: {why}")]
            else:
                decided, wants_failover = self._decide(tentative, item, weight)
                failover = failover or wants_failover
            for event in decided:
                tentative = apply_connection(tentative, event)
            events.extend(decided)
        before = self.state
        self._commit(events, causation)
        self._after_observations(before, events, failover)

    def _decide(self, state: ConnectionState, item: Any, weight: float = 1.0) -> tuple[list[Event], bool]:
        if state.state not in ACTIVE:
            return [], False
        threshold = self.cfg.degraded_latency_ms
        if isinstance(item, m.TrafficObserved):
            self.probing.traffic = (item.rx_bytes, item.tx_bytes)
            return [], False
        if isinstance(item, m.LatencyObserved):
            latency = float(item.latency_ms)
            self.probing.lost = 0.0
            self._remember_probe("+")
            self.probing.window.append(latency)
            high = latency > threshold
            if state.state in (ev.CONNECTING, ev.FAILED):
                lead = "peer answered again" if state.state == ev.FAILED else "first probe answered"
                tail = f" (above {threshold:.0f} ms)" if high else ""
                return [self._transition(ev.DEGRADED if high else ev.CONNECTED,
                                         f"{lead} in {latency:.1f} ms{tail}", latency, state)], False
            if state.state == ev.CONNECTED and high:
                return [self._transition(ev.DEGRADED, f"latency {latency:.1f} ms above {threshold:.0f} ms",
                                         latency, state)], False
            if state.state == ev.DEGRADED and not high:
                return [self._transition(ev.CONNECTED, f"latency improved to {latency:.1f} ms",
                                         latency, state)], False
            return [], False
        # ProbeFailed
        self._remember_probe("-")
        self.probing.lost += weight
        self.probing.window_lost += 1
        if item.reason != m.ProbeFailed().reason:
            self.probing.last_error = item.reason
        needed = self.cfg.lost_probes_before_action
        if self.probing.lost < needed - 1e-9 or state.state == ev.FAILED or self.op is not None:
            return [], False  # an operation in flight decides the path for now
        self.probing.lost = 0.0
        lost = f"{needed} probes lost"
        if state.state in UP:
            if state.path == ev.DIRECT and self.relay is not None:
                return [], True  # after the batch: it needs a relay allocation first
            return self._reconnect(1, lost, state), False
        # The budget counts the reconnects since the last time the peer was up or (re)joined.
        attempt = state.reconnects + 1 if state.reason.startswith("reconnect attempt") else 1
        if attempt <= self.cfg.max_reconnect_attempts:
            return self._reconnect(attempt, lost, state), False
        gave_up = f"{lost} after {self.cfg.max_reconnect_attempts} reconnect attempts"
        return [self._transition(ev.FAILED, gave_up, state=state)], False

    def _remember_probe(self, outcome: str) -> None:
        self.probing.history = (self.probing.history + outcome)[-self.cfg.probe_history:]

    def _after_observations(self, before: ConnectionState, events: Sequence[Event], failover: bool) -> None:
        """The actions the persisted batch asks for (each persists its own events first)."""
        state = self.state
        if before.state in (ev.CONNECTING, ev.FAILED) and state.state in UP:
            self._arm_monitor()  # up: back to one probe an interval (re-arming drops the quick one)
        if state.state == ev.FAILED and before.state != ev.FAILED:
            self._schedule(self.cfg.cleanup_timeout_s, CLEANUP)
        elif before.state == ev.FAILED and state.state != ev.FAILED:
            self.timers.cancel(CLEANUP)
        if state.state == ev.CONNECTING and any(isinstance(e, ev.ReconnectAttempted) for e in events):
            self._connect(state.reconnects + 1)
        if failover and state.state in UP and state.path == ev.DIRECT and self.op is None:
            op = self._begin(FAILOVER,
                             purpose=f"{self.cfg.lost_probes_before_action} probes lost on the direct path")
            self._allocate(op, FAILOVER)

    # ------------------------------------------------------------ timers

    def on_timer(self, timer: m.Timer) -> None:
        if not self.timers.is_current(timer) or self.closing:
            return  # a stale wakeup: re-armed or cancelled since
        assert self.init is not None
        if timer.kind == MONITOR and self.state.state in ACTIVE:
            if not self.probing.in_flight:
                self.probing.in_flight = True
                self.probing.sent_weight = self.probing.armed_weight
                self._request(fx.Probe(tag="probe", virtual_ip=self.init.virtual_ip,
                                       timeout_s=self.cfg.probe_timeout_s))
                self._watch_wireguard()
            self._arm_monitor()
        elif timer.kind == METRICS and self.state.state in ACTIVE:
            self._request(fx.ReadPeerStats(tag="metrics", public_key=self.init.public_key))
            self._schedule(self.cfg.metrics_interval_s, METRICS)
        elif timer.kind == DIRECT_RETRY:
            self._retry_direct()
        elif timer.kind == CLEANUP and self.state.state == ev.FAILED:
            self._cleanup()
        elif timer.kind == WIREGUARD_RETRY and not self.state.wireguard_applied:
            self._apply_wireguard()

    def _watch_wireguard(self) -> None:
        """Read WireGuard's view of the peer with each probe (not the quick ones while connecting)."""
        assert self.init is not None
        if self.state.state != ev.CONNECTING and self.probing.watching is None:
            self.probing.watching = self.state.endpoint or ""
            self._request(fx.ReadPeerStats(tag="watch", public_key=self.init.public_key))

    def _watched(self, stats: PeerStats | None) -> None:
        """Keep the reading (a setback records its handshake age); record a roamed endpoint once."""
        decided, self.probing.watching = self.probing.watching, None
        if stats is None:
            return
        self.probing.stats = stats
        state = self.state
        # Only a settled direct path: a relay's address is not the peer's, and a reading taken
        # across a change of the decided endpoint says nothing about the peer.
        if (stats.endpoint and state.endpoint and stats.endpoint != state.endpoint
                and decided == state.endpoint and state.path == ev.DIRECT and state.state in ACTIVE
                and state.wireguard_configured and state.wireguard_applied and self.op is None
                and "wireguard" not in self.pending):
            self._commit([ev.EndpointChanged(
                **self._base(), old_endpoint=state.endpoint, new_endpoint=stats.endpoint,
                reason="WireGuard now hears the peer from another address (NAT rebinding or roaming)")],
                "watch")
            self._remember_probe("~")  # a later setback shows whether probes were answered since

    def _sample_metrics(self, stats: PeerStats | None) -> None:
        probing = self.probing
        probes = len(probing.window) + probing.window_lost
        if probes == 0:
            return
        window = probing.window
        latency = sum(window) / len(window) if window else None
        jitter = (sum(abs(a - b) for a, b in itertools.pairwise(window))
                  / (len(window) - 1) if len(window) > 1 else None)
        loss = probing.window_lost / probes
        rx, tx = (stats.rx_bytes, stats.tx_bytes) if stats else probing.traffic
        quality = max(0.0, min(100.0, 100.0 - (latency or 0.0) / 10 - (jitter or 0.0) / 5 - loss * 100))
        self._commit([ev.MetricsSampled(**self._base(), window_s=self.cfg.metrics_interval_s,
                                        probes=probes, latency_ms=latency, jitter_ms=jitter, loss=loss,
                                        rx_bytes=rx, tx_bytes=tx, quality=round(quality, 1),
                                        probe_error=probing.last_error)], "metrics")
        probing.window, probing.window_lost, probing.last_error = [], 0, ""

    def _arm_direct_retry(self) -> None:
        if self.state.path == ev.RELAY and self._direct_ruled_out() is None:
            self._schedule(self.cfg.direct_retry_s, DIRECT_RETRY)

    def _retry_direct(self) -> None:
        if not (self.state.path == ev.RELAY and self.state.state in UP and self._direct_ruled_out() is None):
            return
        if self.op is not None:
            self._arm_direct_retry()
            return
        self._punch(self._begin(RETRY_DIRECT))

    def _cleanup(self) -> None:
        assert self.init is not None
        events: list[Event] = []
        if self.state.wireguard_configured:
            events.append(ev.WireGuardPeerRemovalRequested(**self._base(), public_key=self.init.public_key,
                                                           reason="cleanup of a failed connection"))
        events.append(self._transition(ev.CLEANUP, f"no recovery within {self.cfg.cleanup_timeout_s:.0f} s"))
        self._commit(events, "cleanup")
        self._release("cleanup")

    # ------------------------------------------------------------ control plane

    def on_announced(self, candidates: Sequence[str], nat_type: str, announced: bool) -> None:
        remote = self._remote_update(candidates, nat_type)
        if remote is not None:
            self._commit([remote, *self._announced_move(remote.candidates)], "announced")
        if announced and self.state.state in (ev.FAILED, ev.CLEANUP) and self.op is None:
            self.timers.cancel(CLEANUP)
            self._commit(self._reconnect(1, "peer announced again"), "announced")
            self._connect(2)
            if self.state.state in ACTIVE:
                self._arm_monitor()
                self._schedule(self.cfg.metrics_interval_s, METRICS)

    def _announced_move(self, candidates: Sequence[str]) -> list[Event]:
        """The peer announced candidates without the direct endpoint in use: it moved (once a change)."""
        state = self.state
        if state.path != ev.DIRECT or not state.endpoint or not candidates or state.endpoint in candidates:
            return []
        new = next((c for c in candidates if c not in state.candidates), candidates[0])
        return [ev.EndpointChanged(**self._base(), old_endpoint=state.endpoint, new_endpoint=new,
                                   reason="the peer announced candidates without the endpoint in use",
                                   seen_by=ev.SEEN_IN_ANNOUNCE)]

    def _arm_monitor(self) -> None:
        """The next probe: soon while connecting (every ``first_probe_s``), else every interval."""
        delay = self.cfg.probe_interval_s
        if self.state.state == ev.CONNECTING:
            delay = min(self.cfg.first_probe_s, self.cfg.probe_interval_s)
        self.probing.armed_weight = delay / self.cfg.probe_interval_s
        self._schedule(delay, MONITOR)

    def on_relay_changed(self, message: m.RelayChanged) -> None:
        self.relay = message.relay
        state = self.state
        # Only a connection on the relay being left moves: one on another (healthy) relay,
        # where the peer's side put the pair, would split the pair across two relays.
        if not (message.relay and state.path == ev.RELAY and state.relay != message.relay
                and message.previous in (None, state.relay) and state.state in (ev.CONNECTING, *UP)):
            return
        self._move_relay(message.relay, f"relay monitor selected {message.relay}", message.rtt_ms)

    def _move_relay(self, relay: str | None, reason: str, rtt_ms: float | None = None) -> None:
        if relay is None or self.op is not None:
            return
        self._allocate(self._begin(RELAY_MOVE, purpose=reason, rtt_ms=rtt_ms), RELAY_MOVE, relay)

    def close(self, reason: str) -> None:
        assert self.init is not None
        if self.state.state != ev.CLOSED:
            events: list[Event] = []
            if self.state.wireguard_configured:
                events.append(ev.WireGuardPeerRemovalRequested(
                    **self._base(), public_key=self.init.public_key, reason=reason))
            events.append(self._transition(ev.CLOSED, reason))
            self._commit(events, "close")
            self._release("close")
        self.op = None
        self.closing = True
        for kind in (MONITOR, METRICS, DIRECT_RETRY, CLEANUP, WIREGUARD_RETRY):
            self.timers.cancel(kind)
        if not self.pending:
            self._finished()

    def _finished(self) -> None:
        assert self.init is not None
        if self.finished:
            return
        self.finished = True
        self._notify()
        if self.parent is not None:
            self.send(self.parent, m.PeerClosed(self.init.peer_id))
        self.send(self.myAddress, ActorExitRequest())
