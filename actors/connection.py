"""The peer-connection actor's behaviour, independent of where it is hosted.

States: connecting -> connected <-> degraded; lost probes -> failover to a relay
(direct path) or reconnect attempts (at most ``max_reconnect_attempts``) -> failed
-> cleanup after ``cleanup_timeout_s``; closed when the peer leaves. The path is
direct (hole punched) or relay, with a periodic retry of the direct path that
upgrades back to direct.

Every handled message follows persist, then apply, then act: the decision yields
events, the store acknowledges them, the events are folded with
``events.fold.apply_connection`` and only then does the adapter act (WireGuard
changes are made only from acknowledged ``WireGuardPeer*`` events). Probes, hole
punches and relay allocations are observations, needed to decide.

Hosting (``ConnectionHost``): a thespian actor of its own (actors/peer.py) or a
lightweight actor inside its party actor (actors/party.py), see docs/actors.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from actors import messages as m
from actors.adapters import Adapters, build_adapters
from actors.journal import StreamWriter, open_recorder
from actors.logs import logger
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import ConnectionState, apply_connection
from events.streams import peer_stream
from mesh.interfaces import MeshError, PunchResult, RelayAllocation
from mesh.nat.punch import should_try_direct
from store.base import Recorder

ACTIVE = (ev.CONNECTING, ev.CONNECTED, ev.DEGRADED, ev.FAILED)
UP = (ev.CONNECTED, ev.DEGRADED)

MONITOR, METRICS, DIRECT_RETRY, CLEANUP = "monitor", "metrics", "direct-retry", "cleanup"


class ConnectionHost(Protocol):
    def schedule(self, delay_s: float, timer: m.Timer) -> None: ...

    def notify_parent(self, message: Any) -> None: ...

    def finished(self) -> None: ...


def invalid_observation(item: Any) -> str | None:
    """Why an adapter observation cannot be used, or None when it is fine."""
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


class PeerConnection:
    def __init__(self, init: m.PeerInit, host: ConnectionHost, recorder: Recorder | None = None,
                 adapters: Adapters | None = None) -> None:
        self.init = init
        self.cfg = init.config.connection
        self.host = host
        self.adapters = adapters or build_adapters(init.adapters)
        self.incarnation = new_incarnation()
        self.timers = Timers(self.incarnation, target=init.peer_id)
        self.actor = f"peer-connection/{init.party_id}/{init.peer_id}"
        self.writer = StreamWriter(recorder or open_recorder(init.store),
                                   peer_stream(init.node_id, init.party_id, init.peer_id), self.incarnation,
                                   {"node_id": init.node_id, "actor": self.actor})
        self.log = logger.bind(actor=self.actor)
        self.state = ConnectionState()
        self.candidates: tuple[str, ...] = init.candidates
        self.relay = init.relay
        self.allocation: RelayAllocation | None = None
        self.lost = 0  # consecutive lost probes (transient: a restart starts counting again)
        self.window: list[float] = []  # latencies of the current metrics window
        self.window_lost = 0
        self.traffic = (0, 0)
        self._failover_due = False
        self._notified: ConnectionState | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def allowed_ips(self) -> tuple[str, ...]:
        return (f"{self.init.virtual_ip}/32",)

    def start(self) -> None:
        """Replay the stream; begin connecting, or reconcile and resume after a restart."""
        remembered: list[tuple[str, ...]] = []

        def apply(state: ConnectionState, event: Event) -> ConnectionState:
            if isinstance(event, ev.HolePunchAttempted):
                remembered.append(event.remote_candidates)
            return apply_connection(state, event)

        self.state = self.writer.replay(apply, ConnectionState())
        if self.init.close_reason is not None:
            self.close(self.init.close_reason)
            return
        if not self.candidates and remembered:
            self.candidates = remembered[-1]
        if self.state.state in (None, ev.CLOSED):  # a new peer, or one that left and came back
            self._commit([self._transition(ev.CONNECTING, "peer joined the party")], "start")
            self._connect(1, "start")
        elif self.state.state in ACTIVE:
            self.log.info("recovered {} from {} events", self.state.state, self.writer.position)
            self._reconcile()
            if self.state.state == ev.CONNECTING and not self.state.wireguard_configured:
                self._connect(max(self.state.attempt, 1), "resumed after restart")
            if self.state.state == ev.FAILED:
                self.host.schedule(self.cfg.cleanup_timeout_s, self.timers.arm(CLEANUP))
            if self.state.path == ev.RELAY and self.state.relay and self.state.endpoint:
                self.allocation = RelayAllocation(self.state.relay, "", self.state.endpoint)
        if self.state.state in ACTIVE:
            self.host.schedule(self._next_probe_s(), self.timers.arm(MONITOR))
            self.host.schedule(self.cfg.metrics_interval_s, self.timers.arm(METRICS))
            self._arm_direct_retry()
        self._notify()

    def handle(self, message: Any) -> None:
        match message:
            case m.Observations(items=tuple() | list() as items):
                self.on_observations(items, "observations")
            case m.Observations():
                self.reject("Observations", "items must be a sequence of observations")
            case m.Timer():
                self.on_timer(message)
            case m.PeerAnnounced():
                self.on_announced(message)
            case m.RemoteCandidates():
                self.candidates = tuple(message.candidates)
            case m.RelayChanged():
                self.on_relay_changed(message)
            case m.ClosePeer():
                self.close(message.reason)
            case _:
                self.reject(type(message).__name__, "unknown message for a peer connection")
        self._notify()

    def reject(self, message_type: str, reason: str) -> None:
        self.log.warning("rejected {}: {}", message_type, reason)
        self._commit([ev.MessageRejected(actor=self.actor, message_type=message_type, reason=reason)],
                     f"reject {message_type}")

    # ------------------------------------------------------------ persist, apply, act

    def _commit(self, events: Sequence[Event], causation: str) -> None:
        recorded = self.writer.append(events, causation)
        for record in recorded:
            self.state = apply_connection(self.state, record.event)
        for record in recorded:
            self._act(record.event)

    def _act(self, event: Event) -> None:
        wireguard = self.adapters.wireguard
        try:
            if isinstance(event, ev.WireGuardPeerConfigured):
                wireguard.configure_peer(event.public_key, event.endpoint, event.allowed_ips,
                                         event.keepalive_s)
            elif isinstance(event, ev.WireGuardPeerRemoved):
                wireguard.remove_peer(event.public_key)
        except MeshError as error:
            self.log.error("WireGuard change failed ({}); reconciling later", error)

    def _reconcile(self) -> None:
        """Make WireGuard match the replayed state, changing only what differs."""
        key = self.init.public_key
        actual = self.adapters.wireguard.peer_stats().get(key)
        if self.state.wireguard_configured:
            if actual is None or actual.endpoint != self.state.endpoint:
                self.log.info("reconcile: configuring the WireGuard peer as last recorded")
                self.adapters.wireguard.configure_peer(key, self.state.endpoint, self.allowed_ips,
                                                       self.cfg.keepalive_s)
        elif actual is not None:
            self.log.info("reconcile: removing a WireGuard peer that the log says is gone")
            self.adapters.wireguard.remove_peer(key)

    def _notify(self) -> None:
        if self.state != self._notified:
            self._notified = self.state
            self.host.notify_parent(m.ConnectionUpdate(self.init.peer_id, self.state))

    # ------------------------------------------------------------ event helpers

    def _base(self) -> dict[str, str]:
        return {"party_id": self.init.party_id, "peer_id": self.init.peer_id}

    def _transition(self, to_state: str, reason: str, latency_ms: float | None = None,
                    state: ConnectionState | None = None) -> ev.ConnectionStateChanged:
        state = state or self.state
        return ev.ConnectionStateChanged(
            **self._base(), from_state=state.state, to_state=to_state, reason=reason,
            path=state.path, endpoint=state.endpoint, relay=state.relay, latency_ms=latency_ms)

    def _configured(self, endpoint: str | None) -> ev.WireGuardPeerConfigured:
        return ev.WireGuardPeerConfigured(**self._base(), public_key=self.init.public_key,
                                          endpoint=endpoint, allowed_ips=self.allowed_ips,
                                          keepalive_s=self.cfg.keepalive_s)

    def _reconnect(self, attempt: int, reason: str,
                   state: ConnectionState | None = None) -> list[Event]:
        max_attempts = self.cfg.max_reconnect_attempts
        return [ev.ReconnectAttempted(**self._base(), attempt=attempt, max_attempts=max_attempts,
                                      reason=reason),
                self._transition(ev.CONNECTING, f"reconnect attempt {attempt}/{max_attempts}: {reason}",
                                 state=state)]

    # ------------------------------------------------------------ connecting

    def _punch(self, attempt: int) -> PunchResult:
        ends = sorted((self.init.local_peer_id, self.init.peer_id))
        session = f"{self.init.party_id}:{ends[0]}:{ends[1]}:{attempt}"
        try:
            return self.adapters.puncher.punch(session, self.candidates, self.cfg.punch_timeout_s,
                                               peer_public_key=self.init.public_key)
        except MeshError as error:
            return PunchResult(False, None, None, 0.0, str(error))

    def _direct_ruled_out(self) -> str | None:
        """Why a punch is not worth trying, or None: always try direct unless both are symmetric."""
        if not self.candidates:
            return "no direct candidates"
        if not should_try_direct(self.init.local_nat_type, self.init.remote_nat_type):
            return "both sides are behind symmetric NATs"
        return None

    def _direct_likely(self) -> bool:
        """One side open or port-forwarded: the punch all but always works (the NAT matrix)."""
        easy = (ev.NAT_OPEN, ev.NAT_FULL_CONE)
        return self.init.local_nat_type in easy or self.init.remote_nat_type in easy

    def _connect(self, attempt: int, causation: str) -> None:
        ruled_out = self._direct_ruled_out()
        if ruled_out is not None:
            self._commit([ev.ConnectionAttemptStarted(**self._base(), attempt=attempt, path=ev.RELAY)],
                         causation)
            self._use_relay(None, ruled_out, causation)
            return
        started = ev.ConnectionAttemptStarted(**self._base(), attempt=attempt, path=ev.DIRECT)
        attempted = ev.HolePunchAttempted(**self._base(),
                                          local_candidates=self.adapters.puncher.candidates(),
                                          remote_candidates=self.candidates)
        allocation = (self._allocate() if self.cfg.relay_first and not self._direct_likely()
                      else None)
        if allocation is not None:
            self._relay_first(allocation, attempt, started, attempted, causation)
            return
        self._commit([started, attempted], causation)
        result = self._punch(attempt)
        if result.succeeded and result.endpoint:
            self._commit([
                ev.HolePunchSucceeded(**self._base(), endpoint=result.endpoint,
                                      rtt_ms=result.rtt_ms or 0.0, elapsed_ms=result.elapsed_ms),
                ev.PathChosen(**self._base(), path=ev.DIRECT, reason="hole punch succeeded",
                              endpoint=result.endpoint),
                self._configured(result.endpoint)], causation)
            self._release_allocation()
            return
        failed = ev.HolePunchFailed(**self._base(), reason=result.reason, elapsed_ms=result.elapsed_ms)
        self._use_relay(failed, f"hole punch failed: {result.reason}", causation)

    def _relay_first(self, allocation: RelayAllocation, attempt: int, started: Event,
                     attempted: Event, causation: str) -> None:
        """On the relay at once, punch behind it, and upgrade to direct if the punch works."""
        self._commit([started,
                      ev.PathChosen(**self._base(), path=ev.RELAY,
                                    reason="relay first while the hole punch runs",
                                    endpoint=allocation.endpoint, relay=allocation.relay),
                      self._configured(allocation.endpoint), attempted], causation)
        self._swap_allocation(allocation)
        result = self._punch(attempt)
        if not (result.succeeded and result.endpoint):
            self._commit([ev.HolePunchFailed(**self._base(), reason=result.reason,
                                             elapsed_ms=result.elapsed_ms)], causation)
            self._arm_direct_retry()
            return
        self._commit([
            ev.HolePunchSucceeded(**self._base(), endpoint=result.endpoint,
                                  rtt_ms=result.rtt_ms or 0.0, elapsed_ms=result.elapsed_ms),
            ev.PathSwitched(**self._base(), from_path=ev.RELAY, to_path=ev.DIRECT,
                            reason="hole punch succeeded", endpoint=result.endpoint,
                            from_relay=self.state.relay, from_latency_ms=self.state.latency_ms,
                            to_latency_ms=result.rtt_ms),
            self._configured(result.endpoint)], causation)
        self._release_allocation()

    def _allocate(self) -> RelayAllocation | None:
        if self.relay is None:
            return None
        try:
            return self.adapters.relay_client.allocate(self.init.party_id, self.init.peer_id,
                                                       self.relay)
        except MeshError as error:
            self.log.warning("relay {} allocation failed: {}", self.relay, error)
            return None

    def _use_relay(self, first: Event | None, reason: str, causation: str) -> None:
        prefix = [first] if first else []
        allocation = self._allocate()
        if allocation is None:
            self._commit(prefix, causation)
            self.log.warning("no path to {}: {}, and no relay", self.init.peer_id, reason)
            return
        self._commit([*prefix,
                      ev.PathChosen(**self._base(), path=ev.RELAY, reason=reason,
                                    endpoint=allocation.endpoint, relay=allocation.relay),
                      self._configured(allocation.endpoint)], causation)
        self._swap_allocation(allocation)
        self._arm_direct_retry()

    def _swap_allocation(self, allocation: RelayAllocation) -> None:
        old, self.allocation = self.allocation, allocation
        if old is not None and old != allocation:
            self._release(old)

    def _release_allocation(self) -> None:
        old, self.allocation = self.allocation, None
        if old is not None:
            self._release(old)

    def _release(self, allocation: RelayAllocation) -> None:
        try:
            self.adapters.relay_client.release(allocation)
        except MeshError as error:
            self.log.warning("relay release failed: {}", error)

    def _arm_direct_retry(self) -> None:
        if self.state.path == ev.RELAY and self._direct_ruled_out() is None:
            self.host.schedule(self.cfg.direct_retry_s, self.timers.arm(DIRECT_RETRY))

    # ------------------------------------------------------------ observations

    def on_observations(self, items: Sequence[Any], causation: str) -> None:
        events: list[Event] = []
        tentative = self.state
        for item in items:
            why = invalid_observation(item)
            decided: list[Event]
            if why is not None:
                self.log.warning("rejected observation {!r}: {}", item, why)
                decided = [ev.MessageRejected(actor=self.actor, message_type=type(item).__name__,
                                              reason=f"malformed observation: {why}")]
            else:
                decided = self._decide(tentative, item)
            for event in decided:
                tentative = apply_connection(tentative, event)
            events.extend(decided)
        before = self.state
        self._commit(events, causation)
        self._after_observations(before, events)

    def _decide(self, state: ConnectionState, item: Any) -> list[Event]:
        if state.state not in ACTIVE:
            return []
        threshold = self.cfg.degraded_latency_ms
        if isinstance(item, m.TrafficObserved):
            self.traffic = (item.rx_bytes, item.tx_bytes)
            return []
        if isinstance(item, m.LatencyObserved):
            latency = float(item.latency_ms)
            self.lost = 0
            self.window.append(latency)
            high = latency > threshold
            if state.state in (ev.CONNECTING, ev.FAILED):
                lead = "peer answered again" if state.state == ev.FAILED else "first probe answered"
                tail = f" (above {threshold:.0f} ms)" if high else ""
                return [self._transition(ev.DEGRADED if high else ev.CONNECTED,
                                         f"{lead} in {latency:.1f} ms{tail}", latency, state)]
            if state.state == ev.CONNECTED and high:
                return [self._transition(ev.DEGRADED, f"latency {latency:.1f} ms above {threshold:.0f} ms",
                                         latency, state)]
            if state.state == ev.DEGRADED and not high:
                return [self._transition(ev.CONNECTED, f"latency improved to {latency:.1f} ms",
                                         latency, state)]
            return []
        # ProbeFailed
        self.lost += 1
        self.window_lost += 1
        needed = self.cfg.lost_probes_before_action
        if self.lost < needed or state.state == ev.FAILED:
            return []
        self.lost = 0
        lost = f"{needed} probes lost"
        if state.state in UP:
            if state.path == ev.DIRECT and self.relay is not None:
                self._failover_due = True  # after the batch: it needs a relay allocation first
                return []
            return self._reconnect(1, lost, state)
        # The budget counts the reconnects since the last time the peer was up or (re)joined.
        attempt = state.reconnects + 1 if state.reason.startswith("reconnect attempt") else 1
        if attempt <= self.cfg.max_reconnect_attempts:
            return self._reconnect(attempt, lost, state)
        return [self._transition(
            ev.FAILED, f"{lost} after {self.cfg.max_reconnect_attempts} reconnect attempts", state=state)]

    def _after_observations(self, before: ConnectionState, events: Sequence[Event]) -> None:
        """The actions the persisted batch asks for (each persists its own events first)."""
        state = self.state
        if state.state == ev.FAILED and before.state != ev.FAILED:
            self.host.schedule(self.cfg.cleanup_timeout_s, self.timers.arm(CLEANUP))
        elif before.state == ev.FAILED and state.state != ev.FAILED:
            self.timers.cancel(CLEANUP)
        if state.state == ev.CONNECTING and any(isinstance(e, ev.ReconnectAttempted) for e in events):
            self._connect(state.reconnects + 1, f"reconnect {state.reconnects}")
        failover_due, self._failover_due = self._failover_due, False
        if failover_due and state.state in UP and state.path == ev.DIRECT:
            self._failover(f"{self.cfg.lost_probes_before_action} probes lost on the direct path")

    def _failover(self, reason: str) -> None:
        allocation = self._allocate()
        if allocation is None:
            self._commit(self._reconnect(1, f"{reason}; no relay available"), "failover")
            self._connect(2, "failover")
            return
        self._commit([
            ev.PathSwitched(**self._base(), from_path=ev.DIRECT, to_path=ev.RELAY, reason=reason,
                            endpoint=allocation.endpoint, to_relay=allocation.relay,
                            from_latency_ms=self.state.latency_ms),
            self._configured(allocation.endpoint)], "failover")
        self._swap_allocation(allocation)
        self._arm_direct_retry()

    # ------------------------------------------------------------ timers

    def on_timer(self, timer: m.Timer) -> None:
        if not self.timers.is_current(timer):
            return  # a stale wakeup: re-armed or cancelled since
        if timer.kind == MONITOR and self.state.state in ACTIVE:
            self.on_observations([self._probe()], "probe")
            self.host.schedule(self.cfg.probe_interval_s, self.timers.arm(MONITOR))
        elif timer.kind == METRICS and self.state.state in ACTIVE:
            self._sample_metrics()
            self.host.schedule(self.cfg.metrics_interval_s, self.timers.arm(METRICS))
        elif timer.kind == DIRECT_RETRY:
            self._retry_direct()
        elif timer.kind == CLEANUP and self.state.state == ev.FAILED:
            self._cleanup()

    def _probe(self) -> m.LatencyObserved | m.ProbeFailed:
        try:
            latency = self.adapters.prober.probe(self.init.virtual_ip, self.cfg.probe_timeout_s)
        except MeshError as error:
            return m.ProbeFailed(str(error))
        return m.ProbeFailed() if latency is None else m.LatencyObserved(latency)

    def _sample_metrics(self) -> None:
        probes = len(self.window) + self.window_lost
        if probes == 0:
            return
        latency = sum(self.window) / len(self.window) if self.window else None
        jitter = (sum(abs(a - b) for a, b in zip(self.window, self.window[1:], strict=False))
                  / (len(self.window) - 1) if len(self.window) > 1 else None)
        loss = self.window_lost / probes
        stats = self.adapters.wireguard.peer_stats().get(self.init.public_key)
        rx, tx = (stats.rx_bytes, stats.tx_bytes) if stats else self.traffic
        quality = max(0.0, min(100.0, 100.0 - (latency or 0.0) / 10 - (jitter or 0.0) / 5 - loss * 100))
        self._commit([ev.MetricsSampled(**self._base(), window_s=self.cfg.metrics_interval_s,
                                        probes=probes, latency_ms=latency, jitter_ms=jitter, loss=loss,
                                        rx_bytes=rx, tx_bytes=tx, quality=round(quality, 1))], "metrics")
        self.window, self.window_lost = [], 0

    def _retry_direct(self) -> None:
        if not (self.state.path == ev.RELAY and self.state.state in UP and self._direct_ruled_out() is None):
            return
        self._commit([ev.HolePunchAttempted(**self._base(),
                                            local_candidates=self.adapters.puncher.candidates(),
                                            remote_candidates=self.candidates)], "direct-retry")
        result = self._punch(self.state.direct_retries + 1000)
        if not (result.succeeded and result.endpoint):
            self._commit([ev.DirectPathRetried(**self._base(), succeeded=False, reason=result.reason)],
                         "direct-retry")
            self._arm_direct_retry()
            return
        self._commit([
            ev.DirectPathRetried(**self._base(), succeeded=True, reason="hole punch succeeded"),
            ev.PathSwitched(**self._base(), from_path=ev.RELAY, to_path=ev.DIRECT,
                            reason="direct path works again", endpoint=result.endpoint,
                            from_relay=self.state.relay, from_latency_ms=self.state.latency_ms,
                            to_latency_ms=result.rtt_ms),
            self._configured(result.endpoint)], "direct-retry")
        self._release_allocation()

    def _cleanup(self) -> None:
        events: list[Event] = []
        if self.state.wireguard_configured:
            events.append(ev.WireGuardPeerRemoved(**self._base(), public_key=self.init.public_key,
                                                  reason="cleanup of a failed connection"))
        events.append(self._transition(ev.CLEANUP,
                                       f"no recovery within {self.cfg.cleanup_timeout_s:.0f} s"))
        self._commit(events, "cleanup")
        self._release_allocation()

    # ------------------------------------------------------------ control plane

    def on_announced(self, message: m.PeerAnnounced) -> None:
        if message.candidates:
            self.candidates = tuple(message.candidates)
        if self.state.state in (ev.FAILED, ev.CLEANUP):
            self.timers.cancel(CLEANUP)
            self._commit(self._reconnect(1, "peer announced again"), "announced")
            self._connect(2, "announced")
            if self.state.state in ACTIVE:
                self.host.schedule(self._next_probe_s(), self.timers.arm(MONITOR))
                self.host.schedule(self.cfg.metrics_interval_s, self.timers.arm(METRICS))

    def _next_probe_s(self) -> float:
        if self.state.state == ev.CONNECTING:
            return min(self.cfg.first_probe_s, self.cfg.probe_interval_s)
        return self.cfg.probe_interval_s

    def on_relay_changed(self, message: m.RelayChanged) -> None:
        self.relay = message.relay
        state = self.state
        # Only a connection on the relay being left moves: one on another (healthy) relay,
        # where the peer's side put the pair, would split the pair across two relays.
        if not (message.relay and state.path == ev.RELAY and state.relay != message.relay
                and message.previous in (None, state.relay) and state.state in (ev.CONNECTING, *UP)):
            return
        allocation = self._allocate()
        if allocation is None:
            return
        self._commit([
            ev.PathSwitched(**self._base(), from_path=ev.RELAY, to_path=ev.RELAY,
                            reason=f"relay monitor selected {message.relay}",
                            endpoint=allocation.endpoint, from_relay=state.relay,
                            to_relay=allocation.relay, from_latency_ms=state.latency_ms,
                            to_latency_ms=message.rtt_ms),
            self._configured(allocation.endpoint)], "relay-changed")
        self._swap_allocation(allocation)

    def close(self, reason: str) -> None:
        if self.state.state != ev.CLOSED:
            events: list[Event] = []
            if self.state.wireguard_configured:
                events.append(ev.WireGuardPeerRemoved(**self._base(), public_key=self.init.public_key,
                                                      reason=reason))
            events.append(self._transition(ev.CLOSED, reason))
            self._commit(events, "close")
            self._release_allocation()
        for kind in (MONITOR, METRICS, DIRECT_RETRY, CLEANUP):
            self.timers.cancel(kind)
        self._notify()
        self.host.notify_parent(m.PeerClosed(self.init.peer_id))
        self.host.finished()
