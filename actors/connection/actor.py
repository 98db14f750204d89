"""The peer-connection actor: one thespian actor per remote peer of a party.

States: connecting -> connected <-> degraded; lost probes -> failover to a relay
(direct path) or reconnect attempts (``attempts_before_failed``) -> failed, which
means "unreachable now": a failed connection keeps retrying every path it has with
capped, jittered exponential backoff for as long as the member is in the party, and
is up again as soon as a probe is answered. The WireGuard peer is removed only when
the member leaves or the control server expires it (closed); a ``cleanup`` state in
an old log is undone at start, since its member is still in the party. The path is
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

import ipaddress
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import thespian.system.timing as thespian_timing
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
from actors.connection import detection, inputs, paths, retries
from actors.connection.detection import ACTIVE, Probing, invalid_observation
from actors.connection.facts import UP, Ids, reconnect, transition
from actors.connection.inputs import Memory
from actors.journal import StreamWriter, open_recorder, read_tail
from actors.logs import logger
from actors.repeats import RetryRun, SampleRuns, Window, sample_of
from actors.timers import Timers, new_incarnation
from actors.traffic import TRAFFIC, Reading, traffic_flows
from events import types as ev
from events.base import Event
from events.fold import ConnectionState, apply_connection
from events.streams import metrics_stream, peer_stream
from mesh.interfaces import PeerStats, PunchResult, RelayAllocation
from store.base import RecordedEvent

# The state fields only metric samples set (besides a transition's reset of them).
FIGURES = ("latency_ms", "jitter_ms", "loss", "quality", "rx_bytes", "tx_bytes")
# Events that end every run of repeats: what follows is another situation.
RUN_ENDS = (ev.ConnectionStateChanged, ev.PathSwitched, ev.PathChosen)

MONITOR, METRICS, DIRECT_RETRY, RETRY, WIREGUARD_RETRY, WATCH = (
    "monitor", "metrics", "direct-retry", "retry", "wireguard-retry", "watch")
RELAY_VERDICT = "relay-verdict"  # the wait for the relay monitor's word on a relay gone silent
CONFIRM = "confirm"  # the tag of a check's probes
CHECK_REST = "check-rest"  # the rest of a check's probes, when its first round is not answered soon
OFFER = "offer"  # the peer's relay offer, joined once the attempt in flight is over
# The timers whose moment is a decision's input: a restart resumes them where they were.
DECISION_TIMERS = (MONITOR, DIRECT_RETRY, RETRY, OFFER)

# Operation kinds (one at a time) and the purposes of relay allocations.
CONNECT, FAILOVER, RELAY_MOVE, RETRY_DIRECT = "connect", "failover", "relay-move", "direct-retry"
RETRY_UNREACHABLE = "retry-unreachable"  # a failed connection's retry of every path
NEW_CANDIDATES = "new-candidates"  # the peer announced candidates without the endpoint in use
RELAY_FIRST, FALLBACK = "relay first", "fallback"


def _loopback(endpoint: str) -> bool:
    """A relay session's local end (the proxy WireGuard talks to), not a peer's address."""
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bounded_text(value: Any, limit: int = 255) -> str | None:
    """A name from another node's message (a relay, a session id), or None when it is not one."""
    return value if isinstance(value, str) and 0 < len(value) <= limit else None




@dataclass
class Operation:
    """The one multi-step operation in flight (memory only: a restart settles it from the log)."""

    kind: str
    tag: str
    attempt: int = 0
    relay_first: bool = False  # connect: on the relay while the punch runs
    purpose: str = ""
    rtt_ms: float | None = None  # relay move: the new relay's round trip, as the monitor measured
    failed_session: str | None = None  # relay move: the session left behind, never to be handed back
    asked_again: bool = False  # a session handed back on another relay failed: asked once more
    # A failed connection's retry writes its intent and outcome only when it is not a repeat
    # (retries 1, 2, 4, 8 ...: the attempt number on the next recorded row counts the rest).
    recorded: bool = True
    # A failover for quality: the direct path still works, so a relay that cannot be had
    # leaves the connection where it is instead of reconnecting.
    for_quality: bool = False


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
        self.memory = Memory()  # every decision input besides the state and the probes
        self.watching = False  # a watch reading (or its wakeup) is outstanding
        self.sample_runs = SampleRuns()
        self.suspected_relay: str | None = None  # the relay this connection found silent, awaiting a verdict
        self._tags = itertools.count(1)
        self._notified: ConnectionState | None = None
        self.traffic: Reading | None = None  # WireGuard's rx at the last reading while connecting
        # The time left of each decision timer, that a restart resumes.
        self.resume: dict[str, float] = {}
        self.recorded_inputs: tuple[Any, ...] | None = None  # what the last DecisionInputsRecorded said

    # ------------------------------------------------------------ thespian

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ActorExitRequest) and self.init is not None and not self.finished:
            self._guard(self._stop_cleanly)  # a clean stop keeps what the runs counted and the inputs
            return
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
            self._watch()
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
        self.watching = False
        self.actor = f"peer-connection/{init.party_id}/{init.peer_id}"
        self.ids = Ids(init.party_id, init.peer_id)
        self.log = logger.bind(actor=self.actor)
        stream = peer_stream(init.node_id, init.party_id, init.peer_id)
        self.writer = StreamWriter(open_recorder(init.store), stream, self.incarnation,
                                   {"node_id": init.node_id, "actor": self.actor})
        self.state = self.writer.replay(apply_connection, ConnectionState())
        self.memory.due = {}
        self.samples = StreamWriter(self.writer.recorder,
                                    metrics_stream(init.node_id, init.party_id, init.peer_id),
                                    self.incarnation, {"node_id": init.node_id, "actor": self.actor})
        self.sample_runs, self.memory.retry_run = SampleRuns(), None
        self._restore_figures()
        self._restore_inputs()
        settle: list[Event] = []
        interrupted = self.state.punching or self.state.allocating is not None
        if init.restarted and self.writer.position:
            settle.append(ev.ActorRestarted(actor=self.actor, reason=init.restarted))
        if self.state.punching:
            settle.append(ev.HolePunchFailed(**self._base(), reason="interrupted: the connection restarted",
                                             elapsed_ms=0.0))
        if self.state.allocating:
            settle.append(ev.RelayAllocationFailed(**self._base(), relay=self.state.allocating,
                                                   error="interrupted: the connection restarted"))
        remote = paths.remote_update(self.ids, self.state, init.candidates, init.remote_nat_type)
        if remote is not None:
            settle.append(remote)
        self._commit(settle, "start")
        if init.close_reason is not None:
            self.close(init.close_reason)
            return
        if self.state.state in (None, ev.CLOSED):  # a new peer, or one that left and came back
            self._commit([self._transition(ev.CONNECTING, "peer joined the party")], "start")
            self._connect(1)
        elif self.state.state == ev.CLEANUP:  # an old log's cleanup, of a member still in the party
            self._commit([self._transition(ev.CONNECTING, "the member is still in the party: "
                                                          "its WireGuard peer is added again")], "start")
            self._connect(1)
        elif self.state.state in ACTIVE:
            self.log.info("recovered {} from {} events", self.state.state, self.writer.position)
            self._request(fx.ReadPeerStats(tag="reconcile", public_key=init.public_key))
            # An attempt the stop interrupted, or one a crash may have: made again. One that ended
            # without a path waits for its lost probes, as it would have without the restart.
            if self.state.state == ev.CONNECTING and not self.state.wireguard_configured \
                    and (interrupted or self.recorded_inputs is None):
                self._connect(max(self.state.attempt, 1))
            elif self.state.path == ev.RELAY and (held := self._held()):
                self._request(fx.CheckRelaySession(tag="check-session", allocation=held))
            if self.state.state == ev.FAILED:
                self._schedule_retry()
        if self.state.state in ACTIVE:
            self._arm_monitor()
            self._schedule(self.cfg.metrics_interval_s, METRICS)
            self._arm_direct_retry()
            if OFFER in self.resume and (self.memory.offered_relay or self.memory.pending_offer):
                self._schedule(0.0, OFFER)  # resumed: the time left when it stopped
        self.resume = {}

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
            case m.PeerAskedForRelay():
                self.on_peer_asked_for_relay(bounded_text(message.relay), bounded_text(message.session_id))
            case m.RemoteCandidates():
                self.on_announced(message.candidates, self.state.remote_nat_type, announced=False)
            case m.RelayChanged():
                self.on_relay_changed(message)
            case m.RelayQuality():
                self.memory.relay_quality = message
            case m.RelaysReachable():
                self.on_network_back("the relays answer again")
            case m.ControlServerBack():
                self.on_network_back("the control server answers again")
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
        if any(isinstance(event, RUN_ENDS) for event in events):
            self._end_runs()
        for record in self.writer.append(events, causation):
            self.state = apply_connection(self.state, record.event)
        for event in events:
            if isinstance(event, ev.WireGuardPeerConfigRequested | ev.WireGuardPeerRemovalRequested):
                self._apply_wireguard()
                # A new endpoint starts with a clean slate: the old path's silence is not its own,
                # nor are the lost probes of a check still out on it (it ends without a verdict).
                grace = self.cfg.relay_join_grace_s if self.state.path == ev.RELAY else 0.0
                self.probing.silent_since = thespian_timing.currentTime() + grace
                if self.probing.checking:
                    self.probing.checking_answered = True

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
        if kind in DECISION_TIMERS:
            delay_s = max(0.0, self.resume.pop(kind, delay_s))
            self.memory.due[kind] = thespian_timing.currentTime() + delay_s
        self.wakeupAfter(timedelta(seconds=delay_s), self.timers.arm(kind))

    def _cancel(self, kind: str) -> None:
        self.memory.due.pop(kind, None)
        self.timers.cancel(kind)

    def _notify(self) -> None:
        notified = self._notified
        if self.init is not None and self.parent is not None and (
                notified is None or self.state != notified or self.state.inputs != notified.inputs):
            self._notified = self.state
            self.send(self.parent, m.ConnectionUpdate(self.init.peer_id, self.state))

    @property
    def _allowed_ips(self) -> tuple[str, ...]:
        assert self.init is not None
        return (f"{self.init.virtual_ip}/32",)

    # ------------------------------------------------------------ decision inputs

    def _inputs(self) -> ev.DecisionInputsRecorded:
        return inputs.record(self.ids, self.state, self.probing, self.memory, thespian_timing.currentTime(),
                             time.time())

    def _record_inputs(self, causation: str) -> None:
        self._commit([self._inputs()], causation)
        self.recorded_inputs = inputs.key(self._inputs(), self.memory)

    def _stop_cleanly(self) -> None:
        self._write_runs()
        if self.state.state in ACTIVE and not self.closing:
            self._record_inputs("stop")

    def _restore_inputs(self) -> None:
        """Resume from the last ``DecisionInputsRecorded`` when nothing followed it in the stream
        (a clean stop, or a metrics beat before a crash); otherwise every input starts afresh."""
        self.recorded_inputs, self.resume = None, {}
        position = self.writer.position
        newest = self.writer.recorder.read_stream(self.writer.stream_id, position) if position else []
        if not newest or not isinstance(newest[-1].event, ev.DecisionInputsRecorded):
            return
        self.memory, self.resume = inputs.restore(self.state.inputs, self.probing,
                                                  thespian_timing.currentTime(), time.time())
        self.recorded_inputs = inputs.key(self._inputs(), self.memory)

    # ------------------------------------------------------------ event helpers

    def _base(self) -> dict[str, str]:
        assert self.init is not None
        return {"party_id": self.init.party_id, "peer_id": self.init.peer_id}

    def _transition(self, to_state: str, reason: str, latency_ms: float | None = None,
                    state: ConnectionState | None = None) -> ev.ConnectionStateChanged:
        return transition(self.ids, state or self.state, to_state, reason, latency_ms, self.probing.stats,
                          self.probing.history)

    def _configure(self, endpoint: str | None) -> ev.WireGuardPeerConfigRequested:
        assert self.init is not None
        return ev.WireGuardPeerConfigRequested(**self._base(), public_key=self.init.public_key,
                                               endpoint=endpoint, allowed_ips=self._allowed_ips,
                                               keepalive_s=self.cfg.keepalive_s)

    def _reconnect(self, attempt: int, reason: str, state: ConnectionState | None = None) -> list[Event]:
        return reconnect(self.ids, state or self.state, attempt, self.cfg.attempts_before_failed, reason,
                         self.probing.stats, self.probing.history)

    # ------------------------------------------------------------ operations

    def _begin(self, kind: str, **fields: Any) -> Operation:
        self.op = Operation(kind, f"{kind}/{next(self._tags)}", **fields)
        return self.op

    def _current(self, done: fx.EffectDone) -> bool:
        return self.op is not None and done.effect.tag == self.op.tag and not self.closing

    def _direct_ruled_out(self) -> str | None:
        assert self.init is not None
        return retries.direct_ruled_out(self.init.local_nat_type, self.state)

    def _direct_likely(self) -> bool:
        assert self.init is not None
        return retries.direct_likely(self.init.local_nat_type, self.state)

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

    def _punch(self, op: Operation, record: bool = True) -> None:
        """``record=False``: a retry inside a run of failed retries, counted by the run."""
        assert self.init is not None
        if record and op.recorded:
            self._commit([ev.HolePunchAttempted(**self._base(), local_candidates=self.init.local_candidates,
                                                remote_candidates=self.state.candidates)], op.tag)
        ends = sorted((self.init.local_peer_id, self.init.peer_id))
        # Both ends must name a retry's punch session alike, and their retry counters drift
        # apart (counted runs, failed spells, restarts): a retry is named by the wall-clock
        # slot it falls in instead, which also keeps a captured punch from an older slot useless.
        slot = int(time.time() // self.cfg.punch_session_slot_s)
        number = op.attempt if op.kind == CONNECT else f"retry-{slot}"
        self._request(fx.Punch(tag=op.tag, session=f"{self.init.party_id}:{ends[0]}:{ends[1]}:{number}",
                               candidates=self.state.candidates, timeout_s=self.cfg.punch_timeout_s,
                               peer_public_key=self.init.public_key))

    def _allocate(self, op: Operation, purpose: str, relay: str | None = None) -> None:
        relay = relay or self.relay
        if relay is None:
            self._no_path(op, "no relay is known")
            return
        op.purpose = op.purpose or purpose
        if op.recorded:
            self._commit([ev.RelayAllocationRequested(**self._base(), relay=relay, purpose=purpose)], op.tag)
        self._request(fx.AllocateRelay(tag=op.tag, party_id=self._base()["party_id"],
                                       peer_id=self._base()["peer_id"], relay=relay,
                                       failed_session=op.failed_session or self.memory.dead_session))

    def _no_path(self, op: Operation, why_no_relay: str) -> None:
        reason = f"{op.purpose}; {why_no_relay}" if op.purpose else why_no_relay
        self.log.warning("no path to the peer: {}", reason)
        self._commit([ev.NoPathAvailable(**self._base(), reason=reason)], op.tag)
        self._finish(op)

    def _finish(self, op: Operation) -> None:
        if self.op is op:
            self.op = None
            if self.state.state in UP:
                self._answered_through_relay()  # an answer that came while it ran, on the old session

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
            case fx.Probe(tag=tag) if tag.startswith(CONFIRM):
                self._on_checked(done)
            case fx.Probe():
                self.probing.in_flight = False
                if not self.closing:
                    self._on_probed(done)
            case fx.CheckRelaySession(allocation=checked):
                if not (done.ok and done.value) and not self.closing and self.state.path == ev.RELAY \
                        and checked == self._held():  # not replaced meanwhile
                    # A new process: the session lived in the previous one. Open a new one.
                    self._move_relay(self.state.relay or self.relay,
                                     "restore the relay session after a restart")
            case fx.ReadPeerStats(tag="reconcile"):
                self._reconcile(done.value if done.ok else None)
            case fx.ReadPeerStats(tag="metrics"):
                self._sample_metrics(done.value if done.ok else None)
            case fx.ReadPeerStats(tag="watch"):
                self._on_watched(done.value if done.ok else None)
            case fx.ReadPeerStats(tag="traffic"):
                self._on_traffic(done.value if done.ok else None)
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
            # The session that could not be opened (the control server may have handed back the
            # pair's session on another relay than the one asked for), else the one held there.
            unopened = done.value if isinstance(done.value, RelayAllocation) else None
            failed_relay = unopened.relay if unopened is not None else effect.relay
            if failed_relay == self.relay and not self.closing:
                self.send(self.parent, m.RelaySuspected(failed_relay, f"allocation failed: {done.error}"))
            held = self._held()
            if unopened is not None:
                self.memory.dead_session = unopened.session_id
            elif held is not None and held.relay == effect.relay:
                # The relay itself failed us (a silent path alone may be the peer's): its session
                # is reported on the next allocation, so the pair's affinity does not hand it back.
                self.memory.dead_session = held.session_id
            if self.op is None or self.op.recorded or not self._current(done):
                self._commit([ev.RelayAllocationFailed(**self._base(), relay=effect.relay,
                                                       error=done.error or "")], effect.tag)
            if self._current(done):
                self._after_allocation_failed(done.error or "", effect.relay, unopened)
            return
        allocation: RelayAllocation = done.value
        previous = self._held()
        if allocation.session_id != self.memory.dead_session:
            self.memory.dead_session = None
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
        if op.kind == RETRY_UNREACHABLE and self.state.state in UP and self.state.path == ev.DIRECT:
            # The direct path answered while the ticket was on its way (after a cut, the control
            # server is reached seconds after the peer): the pair stays where it is up. Moving it
            # to a session only this end holds sent the two ends opposite ways for 15 s (lab).
            self._commit([opened], op.tag)
            self._release(op.tag)
            self._finish(op)
            return
        if op.kind == RETRY_UNREACHABLE:
            self._commit([opened,
                          ev.PathChosen(**self._base(), path=ev.RELAY, reason=op.purpose,
                                        endpoint=allocation.endpoint, relay=allocation.relay),
                          self._configure(allocation.endpoint)], op.tag)
            self._release_if_replaced(previous, op.tag)
            if self._direct_ruled_out() is None:
                self._punch(op)  # behind the relay, as a connection's first attempt does
            else:
                self._finish(op)
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

    def _after_allocation_failed(self, error: str, relay: str, unopened: RelayAllocation | None) -> None:
        op = self.op
        assert op is not None
        purpose = {FAILOVER: FAILOVER, RELAY_MOVE: RELAY_MOVE}.get(
            op.kind, RELAY_FIRST if op.relay_first else FALLBACK)
        if unopened is not None and unopened.relay != relay and not op.asked_again \
                and op.kind != RETRY_DIRECT:
            # The control server handed back the pair's session on another relay, and this side
            # cannot reach it: ask once more, reporting it, for a new session where it asked.
            op.asked_again = True
            op.failed_session = unopened.session_id
            self._allocate(op, purpose, relay)
            return
        if self.relay is not None and self.relay != relay and op.kind != RETRY_DIRECT:
            # The monitor moved to another relay meanwhile (this one most likely died): that
            # is where the session goes now, not the next attempt a backoff later.
            self._allocate(op, purpose, self.relay)
            return
        if op.kind == CONNECT and op.relay_first:
            op.relay_first = False  # punch first as if no relay were at hand
            self._punch(op)
        elif op.kind == CONNECT:
            self._no_path(op, f"relay allocation failed: {error}")
        elif op.kind == FAILOVER and op.for_quality:
            self._finish(op)  # the lossy direct path stays (the failure is on record)
        elif op.kind == FAILOVER:
            self._finish(op)
            self._commit(self._reconnect(1, f"{op.purpose}; relay allocation failed: {error}"), "failover")
            self._connect(2)
        elif op.kind == RETRY_UNREACHABLE and self._direct_ruled_out() is None:
            self._punch(op)
        else:  # a relay move, or a failed connection's retry with no direct path: the next one
            self._finish(op)

    def _on_punched(self, done: fx.EffectDone) -> None:
        result: PunchResult = done.value if done.ok else PunchResult(False, None, None, 0.0, done.error or "")
        op = self.op
        current = self._current(done) and op is not None
        succeeded = bool(result.succeeded and result.endpoint)
        if op is not None and op.kind == RETRY_DIRECT and current:
            self._on_retried(op, result, succeeded)
            return
        if op is not None and op.kind == RETRY_UNREACHABLE and current:
            self._on_unreachable_punched(op, result, succeeded)
            return
        if op is not None and op.kind == NEW_CANDIDATES and current:
            self._on_new_candidates_punched(op, result, succeeded)
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
            elif self.state.state in UP:
                # The tunnel answered while the punch ran: the peer's end was not punching (it
                # never lost the path, or found it again by itself). The path works; moving the
                # pair to a relay session the peer does not hold would cut it.
                self._finish(op)
            else:
                op.purpose = f"hole punch failed: {result.reason}"
                self._allocate(op, FALLBACK)
            return
        assert result.endpoint is not None
        punched = paths.punch_succeeded(self.ids, result)
        if not current:
            self._commit([punched], done.effect.tag)
            return
        assert op is not None
        chosen = paths.direct_chosen(self.ids, self.state, result)
        self._commit([punched, chosen, self._configure(result.endpoint)], op.tag)
        self._release(op.tag)
        self._finish(op)

    def _on_new_candidates_punched(self, op: Operation, result: PunchResult, succeeded: bool) -> None:
        self._finish(op)
        if not succeeded:  # the endpoint in use may still work: the watch and the probes will say
            self._commit([ev.HolePunchFailed(**self._base(), reason=result.reason,
                                             elapsed_ms=result.elapsed_ms)], op.tag)
            return
        assert result.endpoint is not None
        punched = paths.punch_succeeded(self.ids, result)
        if result.endpoint == self.state.endpoint or self.state.path != ev.DIRECT:
            self._commit([punched], op.tag)
            return
        # The move itself is on record already (EndpointChanged, seen in the announce).
        self._commit([punched, self._configure(result.endpoint)], op.tag)

    def _on_unreachable_punched(self, op: Operation, result: PunchResult, succeeded: bool) -> None:
        if not succeeded:
            if op.recorded:
                self._commit([ev.HolePunchFailed(**self._base(), reason=result.reason,
                                                 elapsed_ms=result.elapsed_ms)], op.tag)
            self._finish(op)
            return
        assert result.endpoint is not None
        punched = paths.punch_succeeded(self.ids, result)
        self._finish(op)
        if self.state.path == ev.DIRECT and self.state.endpoint == result.endpoint \
                and self.state.wireguard_configured:
            self._commit([punched], op.tag)  # the same path answers: the probes will say it is up
            return
        chosen = paths.direct_chosen(self.ids, self.state, result)
        self._commit([punched, chosen, self._configure(result.endpoint)], op.tag)
        self._release(op.tag)

    def _on_retried(self, op: Operation, result: PunchResult, succeeded: bool) -> None:
        self._finish(op)
        if not succeeded:
            run = self.memory.retry_run
            if run is not None and run.reason == result.reason:
                run.add()  # the same failure again: counted
                if run.count * self.cfg.direct_retry_s >= self.cfg.repeats_record_max_s - 1e-9:
                    self._write_retry_run()
            else:
                self._write_retry_run()
                self._commit([ev.DirectPathRetried(**self._base(), succeeded=False, reason=result.reason)],
                             op.tag)
                self.memory.retry_run = RetryRun(result.reason)
            self._arm_direct_retry()
            return
        assert result.endpoint is not None
        if self.memory.quality_switch_at is not None:
            self.memory.quality_switch_at = thespian_timing.currentTime()  # back to direct: a switch too
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
        return detection.observe(self.ids, self.state, state, self.probing, item, weight, self.op is not None,
                                 self.memory.retries, self.cfg)

    def _after_observations(self, before: ConnectionState, events: Sequence[Event], failover: bool) -> None:
        """The actions the persisted batch asks for (each persists its own events first)."""
        state = self.state
        if before.state in (ev.CONNECTING, ev.FAILED) and state.state in UP:
            self._arm_monitor()  # up: back to one probe an interval (re-arming drops the quick one)
            self.probing.outcomes.clear()  # the probes lost before the outage was seen: not loss
            self._answered_through_relay()
        if state.state == ev.FAILED and before.state != ev.FAILED:
            self.memory.retries = 0
            self._arm_monitor()  # unreachable: probe every ``failed_probe_s`` to see it come back
            self._schedule_retry()
        elif before.state == ev.FAILED and state.state != ev.FAILED:
            self._cancel(RETRY)
            self.memory.retries = 0
        if state.state == ev.CONNECTING and any(isinstance(e, ev.ReconnectAttempted) for e in events):
            self._connect(state.reconnects + 1)
        if failover and state.state in UP:
            self._suspect(f"{self.cfg.lost_probes_before_action} probes lost", idle=True)
        self._leave_lossy_path()

    # ------------------------------------------------------------ timers

    def on_timer(self, timer: m.Timer) -> None:
        if not self.timers.is_current(timer) or self.closing:
            return  # a stale wakeup: re-armed or cancelled since
        self.memory.due.pop(timer.kind, None)
        assert self.init is not None
        if timer.kind == MONITOR and self.state.state in ACTIVE:
            if not self.probing.in_flight:
                self.probing.in_flight = True
                self.probing.sent_weight = self.probing.armed_weight
                self._request(fx.Probe(tag="probe", virtual_ip=self.init.virtual_ip,
                                       timeout_s=self.cfg.probe_timeout_s))
            if self.state.state == ev.CONNECTING and self.state.wireguard_configured:
                self._request(fx.ReadPeerStats(tag=TRAFFIC, public_key=self.init.public_key))
            self._arm_monitor()
        elif timer.kind == METRICS and self.state.state in ACTIVE:
            self._request(fx.ReadPeerStats(tag="metrics", public_key=self.init.public_key))
            if inputs.probes_changed(self._inputs(), self.state.inputs):
                self._record_inputs("metrics")
            self._schedule(self.cfg.metrics_interval_s, METRICS)
        elif timer.kind == WATCH:
            if self.state.state in UP:
                self.probing.watched_endpoint = self.state.endpoint or ""
                self._request(fx.ReadPeerStats(tag="watch", public_key=self.init.public_key))
            else:
                self.watching = False
        elif timer.kind == DIRECT_RETRY:
            self._retry_direct()
        elif timer.kind == RETRY and self.state.state == ev.FAILED:
            self._retry_unreachable()
        elif timer.kind == OFFER:
            if self.memory.pending_offer is not None:
                pending, self.memory.pending_offer = self.memory.pending_offer, None
                self.on_peer_asked_for_relay(*pending)
            else:
                self._join_offer()
        elif timer.kind == WIREGUARD_RETRY and not self.state.wireguard_applied:
            self._apply_wireguard()
        elif timer.kind == RELAY_VERDICT:
            self._relay_verdict_overdue()
        elif timer.kind == CHECK_REST:
            self._send_rest_of_check()

    # ------------------------------------------------------------ loss

    def _window_loss(self) -> float | None:
        return detection.window_loss(self.probing, self.state.path, self.cfg)

    def _may_switch(self) -> bool:
        """No switch for quality within ``min_switch_interval_s`` of the last one."""
        at = self.memory.quality_switch_at
        return at is None or thespian_timing.currentTime() - at >= self.cfg.min_switch_interval_s

    def _leave_lossy_path(self) -> None:
        """A lossy direct path moves to the relay if the relay loses clearly less."""
        state, cfg, quality = self.state, self.cfg, self.memory.relay_quality
        loss = self._window_loss()
        if (state.state != ev.DEGRADED or state.path != ev.DIRECT or self.op is not None
                or self.relay is None or loss is None or loss < cfg.degraded_loss or quality is None
                or quality.relay != self.relay or quality.probes < cfg.loss_window_probes // 2
                or quality.loss > loss - cfg.switch_loss_margin
                or not self._may_switch() or detection.relay_path_no_better(self.probing, loss, self.cfg)):
            return
        self.memory.quality_switch_at = thespian_timing.currentTime()
        purpose = (f"loss {loss:.0%} on the direct path; relay {quality.relay} lost {quality.loss:.0%} "
                   "of its probes")
        self._allocate(self._begin(FAILOVER, purpose=purpose, for_quality=True), FAILOVER)

    # ------------------------------------------------------------ fast detection

    def _watch(self) -> None:
        """Keep one watch of WireGuard's counters going while the connection is up."""
        if not self.watching and not self.closing and self.init is not None and self.state.state in UP:
            self.watching = True
            self._schedule(self.cfg.watch_interval_s, WATCH)

    def _on_watched(self, stats: PeerStats | None) -> None:
        self.watching = False
        probing, cfg = self.probing, self.cfg
        if stats is not None:
            self._note_endpoint(stats)
        if self.closing or self.state.state not in UP or stats is None:
            probing.counters = None
            return
        now = thespian_timing.currentTime()
        previous, probing.counters = probing.counters, (stats.rx_bytes, stats.tx_bytes)
        if previous is None or stats.rx_bytes != previous[0]:
            probing.silent_since = now
            if previous is not None:
                probing.rx_grew_at = now
                probing.lost = 0.0  # the tunnel receives: lost probes were loss, not a dead path
        busy = previous is not None and stats.tx_bytes > previous[1]
        if busy and probing.read_at is not None and (stats.tx_bytes - previous[1]) / max(
                now - probing.read_at, cfg.idle_watch_interval_s) > cfg.idle_tx_bytes_s:
            probing.sending_at = now
        probing.read_at = now
        if probing.idle_armed and not detection.idle(self.probing, self.state, now, self.cfg):
            self._arm_monitor()  # traffic started (or the peer fell silent): probe at the normal rate
        if busy:
            silence = now - probing.silent_since
            handshake_age = time.time() - stats.last_handshake if stats.last_handshake else 0.0
            if silence >= cfg.silent_rx_s:
                self._suspect(f"nothing received for {silence:.1f} s while sending")
            elif handshake_age > cfg.handshake_stale_s:
                self._suspect(f"last handshake {handshake_age:.0f} s ago while sending")
        self.watching = True
        if busy:
            self._schedule(cfg.watch_interval_s, WATCH)
        else:
            # On the node's common beat (thespian's clock is the process's): the idle readings
            # of every connection fall together and share one UAPI read.
            beat = cfg.quiet_watch_interval_s if probing.idle_armed else cfg.idle_watch_interval_s
            self._schedule(beat * math.floor((now + 1.5 * beat) / beat) - now, WATCH)

    def _on_traffic(self, stats: PeerStats | None) -> None:
        """Connecting, and WireGuard carries traffic: connected now (actors.traffic)."""
        if self.closing or self.state.state != ev.CONNECTING:
            self.traffic = None
            return
        tick_s = min(self.cfg.first_probe_s, self.cfg.probe_interval_s)
        self.traffic, reason = traffic_flows(self.traffic, stats, thespian_timing.currentTime(), time.time(),
                                             tick_s, self.cfg.handshake_stale_s)
        if reason is None:
            return
        before = self.state
        events = [self._transition(ev.CONNECTED, reason)]
        self._commit(events, TRAFFIC)
        self._after_observations(before, events, False)

    def _suspect(self, reason: str, idle: bool = False) -> None:
        """Check a path that looks dead with a few probes at once; act only if all are lost.

        The peer's relay offer is no proof: under loss it may have left the path for quality
        (its relay probes were clean), and three probes are lost 42 % of the time at 50 %
        loss each way."""
        assert self.init is not None
        probing, cfg = self.probing, self.cfg
        if probing.checking or self.op is not None or self.state.state not in UP:
            return
        if idle and probing.rx_grew_at is not None and \
                thespian_timing.currentTime() - probing.rx_grew_at < cfg.keepalive_s + cfg.probe_interval_s:
            return  # the peer's packets (its keepalives at least) still arrive: the probes met loss
        needed = detection.check_size(self._window_loss(), cfg)
        probing.check_lost, probing.check_reason, probing.check_needed = 0, reason, needed
        probing.checking_answered, probing.check_sent = False, 0
        # A first round of a few probes (a live path answers one of them within a round
        # trip); if none is answered soon, the rest of what the path's loss asks for.
        self._send_checks(min(cfg.confirm_probes, needed))
        if needed > probing.check_sent:
            recent = max(probing.window[-3:], default=self.state.latency_ms) or 0.0
            rest_after = min(detection.check_timeout(self.probing, self.state.latency_ms, cfg),
                             max(cfg.confirm_rest_after_s, 3 * recent / 1000))
            self._schedule(rest_after, CHECK_REST)

    def _send_rest_of_check(self) -> None:
        """The check's first round is not answered yet: the rest of its probes, at once."""
        probing = self.probing
        if probing.checking and not probing.checking_answered and probing.check_sent < probing.check_needed:
            self._send_checks(probing.check_needed - probing.check_sent)

    def _send_checks(self, probes: int) -> None:
        assert self.init is not None
        probing = self.probing
        probing.checking += probes
        probing.check_sent += probes
        timeout = detection.check_timeout(self.probing, self.state.latency_ms, self.cfg)
        for _ in range(probes):
            self._request(fx.Probe(tag=f"{CONFIRM}/{next(self._tags)}", virtual_ip=self.init.virtual_ip,
                                   timeout_s=timeout))

    def _on_checked(self, done: fx.EffectDone) -> None:
        probing = self.probing
        probing.checking = max(0, probing.checking - 1)
        if not (done.ok and done.value is not None):
            probing.check_lost += 1
        else:
            probing.checking_answered = True
            probing.silent_since = thespian_timing.currentTime()
        if probing.checking or self.closing:
            return
        if probing.check_lost and not probing.checking_answered and probing.check_sent < probing.check_needed:
            self._send_checks(probing.check_needed - probing.check_sent)
            return
        if probing.check_lost and not probing.checking_answered:
            reason = probing.check_reason
            if "probes lost" not in reason:  # what the check saw: `diagnose` reads the words too
                reason = f"{reason}; {probing.check_lost} probes lost"
            self._path_dead(reason)

    def _path_dead(self, reason: str) -> None:
        """The path is dead: the direct path fails over to the relay, anything else reconnects."""
        state = self.state
        if state.state not in UP or self.op is not None:
            return
        self.probing.lost = 0.0
        if state.path == ev.DIRECT and self.relay is not None:
            self._allocate(self._begin(FAILOVER, purpose=f"{reason} on the direct path"), FAILOVER)
            return
        self._commit(self._reconnect(1, reason), "path dead")
        self._arm_monitor()
        if state.path == ev.RELAY and state.relay is not None and self._suspect_relay(state.relay, reason):
            return
        self._connect(self.state.reconnects + 1)

    def _suspect_relay(self, relay: str, reason: str) -> bool:
        """Tell the relay monitor that the path through ``relay`` went silent. True when that
        relay is the node's selected one: the connection then waits for the monitor's verdict
        (a ``RelayChanged`` moves it to another relay) rather than reconnect onto a relay that
        is most likely dead; without a verdict in ``relay_verdict_wait_s`` it reconnects."""
        self.send(self.parent, m.RelaySuspected(relay, reason))
        if relay != self.relay:
            return False
        self.suspected_relay = relay
        self._schedule(self.cfg.relay_verdict_wait_s, RELAY_VERDICT)
        return True

    def _relay_verdict_overdue(self) -> None:
        """The monitor kept the silent relay: the peer's side is the likelier cause; reconnect."""
        relay, self.suspected_relay = self.suspected_relay, None
        state = self.state
        if relay is not None and state.state == ev.CONNECTING and self.op is None \
                and state.relay == relay:
            self._connect(state.reconnects + 1)

    def _note_endpoint(self, stats: PeerStats) -> None:
        """Keep the reading (a setback records its handshake age); record a roamed endpoint once."""
        decided, self.probing.watched_endpoint = self.probing.watched_endpoint, None
        self.probing.stats = stats
        state = self.state
        # Only a settled path: a reading taken across a change of the decided endpoint says
        # nothing about the peer.
        if not (stats.endpoint and state.endpoint and stats.endpoint != state.endpoint
                and decided == state.endpoint and state.state in ACTIVE
                and state.wireguard_configured and state.wireguard_applied and self.op is None
                and "wireguard" not in self.pending):
            return
        if self._follow_roaming(stats.endpoint):
            return
        if state.path == ev.DIRECT:  # a relay's address is not the peer's
            self._commit([ev.EndpointChanged(
                **self._base(), old_endpoint=state.endpoint, new_endpoint=stats.endpoint,
                reason="WireGuard now hears the peer from another address (NAT rebinding or roaming)")],
                "watch")
            # A later setback shows whether probes were answered since.
            detection.remember_probe(self.probing, "~", self.cfg)

    def _answered_through_relay(self) -> None:
        """An attempt that started on the direct path was answered before it changed anything:
        through the relay session WireGuard still uses. The path is the relay's."""
        state = self.state
        if state.path == ev.DIRECT and state.endpoint and state.endpoint == state.session_endpoint \
                and state.session_relay is not None and self.op is None:
            self._commit([ev.PathChosen(**self._base(), path=ev.RELAY, endpoint=state.endpoint,
                                        relay=state.session_relay,
                                        reason="answered through the relay session WireGuard still uses")],
                         "probe")
            self._arm_direct_retry()

    def _follow_roaming(self, heard_from: str) -> bool:
        """The two ends decided different paths (each retried on its own during an outage, and
        one side's offer or punch never reached the other), and WireGuard, hearing the peer on
        the other path, already sends there. Make the decision match the path that works: a
        connection up on the relay that hears the peer directly moves to direct; one on the
        direct path that hears it through its own relay session moves to the relay. At most
        once a ``min_switch_interval_s`` towards direct, so that a direct path that only works
        one way cannot make the pair hop."""
        state = self.state
        if state.state not in UP:
            return False
        through_relay = heard_from == state.session_endpoint
        if state.path == ev.RELAY and not through_relay and not _loopback(heard_from) and self._may_switch():
            self.memory.quality_switch_at = thespian_timing.currentTime()
            self._commit([ev.PathSwitched(
                **self._base(), from_path=ev.RELAY, to_path=ev.DIRECT, endpoint=heard_from,
                reason=f"WireGuard hears the peer directly from {heard_from}: its end is on the direct path",
                from_relay=state.relay, from_latency_ms=state.latency_ms),
                self._configure(heard_from)], "watch")
            self._release("roamed")
            return True
        if state.path == ev.DIRECT and through_relay and state.session_relay is not None:
            self._commit([ev.PathSwitched(
                **self._base(), from_path=ev.DIRECT, to_path=ev.RELAY, endpoint=heard_from,
                reason="WireGuard hears the peer through the relay session: its end is on the relay",
                to_relay=state.session_relay, from_latency_ms=state.latency_ms),
                self._configure(heard_from)], "watch")
            self._arm_direct_retry()
            return True
        return False

    def _sample_metrics(self, stats: PeerStats | None) -> None:
        probing = self.probing
        if not probing.window and not probing.window_lost:
            return
        rx, tx = (stats.rx_bytes, stats.tx_bytes) if stats else probing.traffic
        window = Window.measure(probing.window, probing.window_lost, rx, tx, probing.last_error,
                                self.cfg.metrics_interval_s)
        probing.window, probing.window_lost, probing.last_error = [], 0, ""
        for windows, counted in self.sample_runs.add(window, self.cfg):
            self._write_samples(windows, counted)

    def _write_samples(self, windows: list[Window], counted: bool) -> None:
        """Metric samples go to their own stream (retention prunes it; transitions stay)."""
        if not windows:
            return
        sample = sample_of(windows, self._base()["party_id"], self._base()["peer_id"],
                           self.cfg.metrics_interval_s, counted)
        for record in self.samples.append([sample], "metrics"):
            self.state = apply_connection(self.state, record.event)

    def _write_retry_run(self) -> None:
        counted = self.memory.retry_run.take(**self._base()) if self.memory.retry_run is not None else None
        if counted is not None:
            for record in self.writer.append([counted], "direct-retry"):
                self.state = apply_connection(self.state, record.event)

    def _write_runs(self) -> None:
        self._write_samples(self.sample_runs.take(), True)
        self._write_retry_run()

    def _end_runs(self) -> None:
        """Before a transition or a path change: write what the runs counted, and close them."""
        self._write_runs()
        self.sample_runs.recorded = None
        self.memory.retry_run = None

    def _restore_figures(self) -> None:
        """After a restart: the figures as the replay folds them, the newest sample and the
        transitions after it (a sample sets every figure; a transition may reset some)."""
        recorder = self.samples.recorder
        position = recorder.stream_position(self.samples.stream_id)
        self.samples.position = position
        newest = recorder.read_stream(self.samples.stream_id, position) if position else []
        if not newest:
            return
        sample = newest[-1]
        figures = apply_connection(ConnectionState(), sample.event)
        for record in self._after(sample.global_position):
            if isinstance(record.event, ev.ConnectionStateChanged):
                figures = apply_connection(replace(figures, state=record.event.from_state), record.event)
        self.state = replace(self.state, **{name: getattr(figures, name) for name in FIGURES})

    def _after(self, global_position: int) -> list[RecordedEvent]:
        """The connection stream's records after ``global_position``."""
        records = read_tail(self.writer.recorder, self.writer.stream_id, self.writer.position,
                            lambda tail: tail[0].global_position < global_position)
        return [record for record in records if record.global_position > global_position]

    def _arm_direct_retry(self) -> None:
        if self.state.path == ev.RELAY and self._direct_ruled_out() is None:
            self._schedule(self.cfg.direct_retry_s, DIRECT_RETRY)

    def _retry_direct(self) -> None:
        if not (self.state.path == ev.RELAY and self.state.state in UP and self._direct_ruled_out() is None):
            return
        if self.op is not None or not self._may_switch():
            self._arm_direct_retry()
            return
        self._punch(self._begin(RETRY_DIRECT), record=self.memory.retry_run is None)

    def _schedule_retry(self) -> None:
        self._schedule(retries.retry_delay(self.actor, self.memory.retries, self.cfg), RETRY)

    def _retry_unreachable(self, fresh_session: bool = False) -> None:
        """A failed connection tries every path again: the tunnel (a probe), the direct
        candidates (a punch), and the relay (a session, if it holds none; with
        ``fresh_session`` even if it holds one: after a long outage the peer may wait on
        another, and asking gives this side the pair's current one and offers it to the peer)."""
        assert self.init is not None
        if self.op is not None:  # a retry or a reconnect still runs: try again after it
            self._schedule_retry()
            return
        self.memory.retries += 1
        retry = self.memory.retries
        recorded = retries.written(retry)
        op = self._begin(RETRY_UNREACHABLE, attempt=retry, recorded=recorded,
                         purpose=f"unreachable: retry {retry}")
        if recorded:
            self._commit([ev.ReconnectAttempted(
                **self._base(), attempt=self.cfg.attempts_before_failed + retry,
                max_attempts=self.cfg.attempts_before_failed,
                reason=f"unreachable: retry {retry} of every path (repeats in between are not written)")],
                op.tag)
        if not self.probing.in_flight:
            self.probing.in_flight = True
            self.probing.sent_weight = 0.0
            self._request(fx.Probe(tag="probe", virtual_ip=self.init.virtual_ip,
                                   timeout_s=self.cfg.probe_timeout_s))
        if (fresh_session or self._held() is None) and self.relay is not None:
            self._allocate(op, FALLBACK)  # the relay first (it needs no luck), then the punch
        elif self._direct_ruled_out() is None:
            self._punch(op)
        else:
            self._finish(op)
        self._schedule_retry()

    # ------------------------------------------------------------ control plane

    def on_announced(self, candidates: Sequence[str], nat_type: str, announced: bool) -> None:
        remote = paths.remote_update(self.ids, self.state, candidates, nat_type)
        if remote is not None:
            moved = paths.announced_move(self.ids, self.state, remote.candidates)
            self._commit([remote, *moved], "announced")
            self._follow_new_candidates()
        if announced and self._waiting():
            self._reconnect_now("peer announced again")

    def _waiting(self) -> bool:
        """Not up and nothing in flight: the connection only waits for lost probes (connecting)
        or for its backoff (failed) before its next attempt."""
        stalled = self.state.state == ev.CONNECTING and self.state.wireguard_configured
        return (stalled or self.state.state in (ev.FAILED, ev.CLEANUP)) and self.op is None \
            and not self.closing

    def _reconnect_now(self, reason: str) -> None:
        """A new attempt at once, with a new budget: something changed that makes it worth it."""
        self._cancel(RETRY)
        self.memory.retries = 0
        self.probing.lost = 0.0
        self._commit(self._reconnect(1, reason), "reconnect now")
        self._connect(2)
        if self.state.state in ACTIVE:
            self._arm_monitor()
            self._schedule(self.cfg.metrics_interval_s, METRICS)

    def on_network_back(self, reason: str) -> None:
        """This node's uplink (its relays or its control server) is back after an outage: a
        connection that could not reach its peer tries now, not at its backoff or after its
        current attempt's probes are all lost (up to 15 s while connecting)."""
        if self.closing:
            return
        if self.state.state == ev.FAILED:
            self.memory.retries = 0  # the network changed: the backoff starts again, from now
            self._retry_unreachable(fresh_session=True)
        elif self._waiting():
            self._reconnect_now(reason)

    def on_peer_asked_for_relay(self, relay: str | None, session_id: str | None) -> None:
        """The peer allocated a relay session for this pair (its offer arrived): its side of
        the path broke, it restarted, or it is back from an outage and waits on the relay."""
        state, held = self.state, self._held()
        moved_session = session_id is not None and held is not None and session_id != held.session_id
        if state.state in UP and state.path == ev.RELAY and relay is not None and self.op is not None:
            if (moved_session or relay != state.relay) and not self.closing:
                # A direct retry's punch is in flight: follow the peer once it is over, not
                # when this side's own silence check finds the session it holds deserted.
                self.memory.pending_offer = (relay, session_id)
                self._schedule(self.cfg.first_probe_s, OFFER)
            return
        if state.state in UP and state.path == ev.RELAY and relay is not None:
            if moved_session:
                # The peer moved the pair (a failed session, a restart, its monitor's choice):
                # follow at once, before the peer's side finds the session it left silent.
                self._move_relay(relay, f"the peer moved the pair to relay session {session_id[:16]}")
                return
            if relay != state.relay:
                self._move_relay(relay, f"the peer moved the pair to relay {relay}")
                return
            if session_id is not None and held is not None:
                return  # the session this side holds: both ends are on it
        if state.state in UP and state.path == ev.DIRECT and self.op is None and not self.closing \
                and (loss := self._window_loss()) is not None and loss > self.cfg.recovered_loss:
            # The peer left a lossy direct path for its relay (its own relay probes were clean),
            # and this side's window says the path is lossy too (above where a degraded one is
            # up again): follow, a switch for quality, rather than answer its check and keep the
            # two ends on two paths until the peer's way back a minute later.
            self.memory.quality_switch_at = thespian_timing.currentTime()
            purpose = f"the peer moved the pair to the relay; loss {loss:.0%} on the direct path here too"
            self._allocate(self._begin(FAILOVER, purpose=purpose, for_quality=True), FAILOVER, relay)
            return
        if state.state in UP:
            # On the relay, the peer may have moved the pair to a new session: the check finds
            # out, at the path's own loss (a lossy relay path must not be left by chance).
            self._suspect("the peer asked for a relay session")
            return
        if state.state in (ev.CONNECTING, ev.FAILED) and not self.closing:
            self.memory.offered_relay = relay or self.relay
            self._join_offer()

    def _join_offer(self) -> None:
        """Join the session the peer offered, on its relay (the ticket it pushed is used, so
        the control server is not asked for another): waiting for lost probes or a backoff
        would leave the two ends on different paths for many seconds. An attempt in flight
        finishes first."""
        relay = self.memory.offered_relay
        if relay is None or self.closing or self.state.state not in (ev.CONNECTING, ev.FAILED):
            self.memory.offered_relay = None
            return
        if not self._waiting():
            if self.op is not None:
                self._schedule(self.cfg.first_probe_s, OFFER)
            return
        self.memory.offered_relay = None
        self._cancel(RETRY)
        self.memory.retries = 0
        op = self._begin(RETRY_UNREACHABLE, purpose="the peer offered a relay session")
        self._allocate(op, FALLBACK, relay)
        if self.state.state == ev.FAILED:
            self._schedule_retry()

    def _follow_new_candidates(self) -> None:
        """The peer's public address or port changed (a router reboot, a NAT rebinding, a new
        network) and the control plane says so: punch its new candidates now, on the direct
        path when the endpoint in use is no longer among them, and from the relay at once
        instead of at the next periodic retry."""
        state = self.state
        if state.state not in UP or self.op is not None or not state.candidates \
                or self._direct_ruled_out() is not None:
            return
        if state.path == ev.DIRECT and state.endpoint not in state.candidates:
            self._punch(self._begin(NEW_CANDIDATES, purpose="the peer announced new candidates"))
        elif state.path == ev.RELAY:
            self._retry_direct()

    def _arm_monitor(self) -> None:
        """The next probe: soon while connecting (every ``first_probe_s``), else every interval."""
        delay = self.cfg.probe_interval_s
        if self.state.state == ev.CONNECTING:
            delay = min(self.cfg.first_probe_s, self.cfg.probe_interval_s)
        elif self.state.state == ev.FAILED:
            delay = min(self.cfg.failed_probe_s, self.cfg.probe_interval_s)
        elif detection.idle(self.probing, self.state, thespian_timing.currentTime(), self.cfg):
            delay = max(self.cfg.idle_probe_interval_s, self.cfg.probe_interval_s)
        self.probing.idle_armed = delay > self.cfg.probe_interval_s
        self.probing.armed_weight = min(1.0, delay / self.cfg.probe_interval_s)
        self._schedule(delay, MONITOR)

    def on_relay_changed(self, message: m.RelayChanged) -> None:
        self.relay = message.relay
        state = self.state
        # Only a connection on the relay being left moves: one on another (healthy) relay,
        # where the peer's side put the pair, would split the pair across two relays.
        if not (message.relay and state.path == ev.RELAY and state.relay != message.relay
                and message.previous in (None, state.relay) and state.state in (ev.CONNECTING, *UP)):
            return
        # The session on the relay being left failed this pair: the control server must not
        # hand it back (its relay affinity would otherwise, within ``RELAY_AFFINITY_S``).
        held = self._held()
        failed = held.session_id if held is not None and held.relay == state.relay else None
        if self.suspected_relay is not None and self.op is None:
            self.suspected_relay = None
            self._cancel(RELAY_VERDICT)
        self._move_relay(message.relay, f"relay monitor selected {message.relay}", message.rtt_ms, failed)

    def _move_relay(self, relay: str | None, reason: str, rtt_ms: float | None = None,
                    failed_session: str | None = None) -> None:
        if relay is None or self.op is not None:
            return
        self._allocate(self._begin(RELAY_MOVE, purpose=reason, rtt_ms=rtt_ms, failed_session=failed_session),
                       RELAY_MOVE, relay)

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
        for kind in (MONITOR, METRICS, DIRECT_RETRY, RETRY, WIREGUARD_RETRY, RELAY_VERDICT, OFFER):
            self._cancel(kind)
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
