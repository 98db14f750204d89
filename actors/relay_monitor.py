"""The relay-monitor actor: probes every relay often, records seldom, selects with hysteresis.

Probes run every ``probe_interval_s`` (0.5 s), all of a round at once through the edge
(``ProbeRelay`` effects; a round closes when every probe has answered or timed out);
each relay's stream (``relay:<node>:<host:port>``)
gets one aggregated RelayProbed per ``record_interval_s`` (30 s) that changed something
(an interval that changed nothing joins a run, written as one counted RelayProbed when
something changes or after ``record_max_s``), RelayDegraded while
the selected relay is slow or silent, and RelaySelected when it becomes the node's
relay. Latency decisions are taken on the aggregated window only: a degraded relay is
replaced only by one that is at least ``min_improvement_ms`` better and below
``max_ratio`` of its round trip, so two relays of near-equal latency never flap. A
relay that misses ``dead_after_misses`` probes in a row (more after recent loss), the last
of them a whole burst sent at once, is dead (a killed relay answers with ICMP port
unreachable at once): when it is the selected one, the window is recorded early and the
best live relay is selected on that tick.

A restart folds each relay's stream from its snapshot; the selected relay is the one whose
last ``RelaySelected`` has the highest ``selection`` number (a log written before the
numbering is read back from the end of the streams of the relays ever selected).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from thespian.actors import Actor, ActorAddress, ActorExitRequest, PoisonMessage, WakeupMessage

from actors import effects as fx
from actors import logs
from actors import messages as m
from actors.config import RelayMonitorConfig
from actors.journal import StreamWriter, open_recorder, read_tail
from actors.logs import logger
from actors.repeats import within
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import RelayState, apply_relay
from events.streams import relay_stream
from mesh.relay.selection import best_relay, should_switch

PROBE = "probe"


@dataclass
class Window:
    """One relay's probes since the last record (memory only: what is stored is the aggregate)."""

    probes: int = 0
    rtts: list[float] = field(default_factory=list)
    misses: int = 0  # consecutive lost probes, across windows

    def median(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None


@dataclass
class ProbeRun:
    """A relay's last written record and the intervals that changed nothing since."""

    answered_all: bool | None = None  # of the last written record (None: none written yet)
    rtt_ms: float | None = None
    windows: int = 0
    probes: int = 0
    answered: int = 0
    medians: list[float] = field(default_factory=list)
    first_at: str = ""

    def unchanged(self, window: Window, degraded: bool, config: RelayMonitorConfig) -> bool:
        if self.answered_all is None or window.probes == 0:
            return False
        answered = len(window.rtts)
        if degraded and answered:
            return False  # an answer from a degraded relay clears the mark when folded: a change
        if answered not in (0, window.probes) or (answered == window.probes) != self.answered_all:
            return False
        return within(window.median(), self.rtt_ms, config.same_rtt_ms, config.same_rtt_ratio)

    def add(self, window: Window, record_interval_s: float) -> None:
        if not self.windows:
            began = datetime.now(UTC) - timedelta(seconds=record_interval_s)
            self.first_at = began.isoformat(timespec="milliseconds")
        self.windows += 1
        self.probes += window.probes
        self.answered += len(window.rtts)
        median = window.median()
        if median is not None:
            self.medians.append(median)

    def take(self, relay: str) -> ev.RelayProbed | None:
        if not self.windows:
            return None
        event = ev.RelayProbed(relay=relay, probes=self.probes, answered=self.answered,
                               rtt_ms=statistics.median(self.medians) if self.medians else None,
                               windows=self.windows, first_at=self.first_at)
        self.windows, self.probes, self.answered, self.medians, self.first_at = 0, 0, 0, [], ""
        return event

    def written(self, window: Window) -> None:
        self.answered_all = bool(window.rtts) and len(window.rtts) == window.probes
        self.rtt_ms = window.median()


@dataclass(frozen=True)
class Choice:
    relay: str
    rtt_ms: float | None
    reason: str


def choose_relay(selected: str | None, rtts: dict[str, float | None],
                 config: RelayMonitorConfig) -> tuple[bool, Choice | None]:
    """Pure: (is the selected relay degraded, the relay to switch to or None)."""
    best = best_relay(rtts)
    if selected is None or selected not in rtts:
        if best is None:
            return False, None
        answered = sum(rtt is not None for rtt in rtts.values())
        return False, Choice(best, rtts[best],
                             f"lowest round trip ({rtts[best]:.1f} ms) of {answered} relays")
    current = rtts[selected]
    if current is not None and current <= config.degraded_rtt_ms:
        return False, None
    candidate = best_relay({relay: rtt for relay, rtt in rtts.items() if relay != selected})
    if candidate is None or not should_switch(current, rtts[candidate], config.min_improvement_ms,
                                              config.max_ratio):
        return True, None
    rtt = rtts[candidate]
    if current is None:
        return True, Choice(candidate, rtt, f"{selected} stopped answering; {candidate} is {rtt:.1f} ms")
    return True, Choice(candidate, rtt,
                        f"{selected} degraded ({current:.1f} ms); {candidate} is {rtt:.1f} ms")


class RelayMonitorActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init: m.RelayMonitorInit | None = None
        self.round = 0  # the probe round in flight (0: none)
        self.outstanding = 0  # its probes not answered yet
        self.writers: dict[str, StreamWriter] = {}
        self.states: dict[str, RelayState] = {}
        self.selected: str | None = None
        self.windows: dict[str, Window] = {}
        self.outcomes: dict[str, deque[bool]] = {}  # recent probes per relay, True if lost (memory only)
        self.death_misses: dict[str, int] = {}  # the misses in a row that made each dead relay dead
        self.runs: dict[str, ProbeRun] = {}
        self.ticks = 0  # probe ticks since the last record
        self.death_recorded = False  # the selected relay's death is in the log already
        self.degraded_reasons: dict[str, str] = {}  # the last RelayDegraded written, per relay
        self.dead: set[str] = set()  # relays seen dead (memory only; re-learnt after a restart)
        self.suspected: set[str] = set()  # relays a connection found silent: the next round checks them
        self.bursts: dict[str, int] = {}  # relays probed with a burst this round: the misses if all are lost
        self.sent: dict[str, int] = {}  # probes of this round, per relay
        self.answered: dict[str, int] = {}  # answers of this round, per relay
        self.timers = Timers(new_incarnation())
        self.parent: ActorAddress | None = None
        self.log = logger

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ActorExitRequest):
            if self.init is not None:
                for relay in self.init.relays:  # a clean stop keeps what the runs counted
                    self._write_run(relay)
            return
        if isinstance(message, m.RelayMonitorInit):
            if self.init is None:
                self.parent = sender
                self._start(message)
            return
        if self.init is None:
            return
        match message:
            case WakeupMessage(payload=m.Timer() as timer):
                if self.timers.is_current(timer) and timer.kind == PROBE:
                    if self.outstanding == 0:
                        self.send_round()
                    self._arm()
            case m.RelaySuspected():
                self._suspected(message)
            case fx.EffectDone(effect=fx.ProbeRelay() as probe):
                if probe.tag == f"round/{self.round}" and self.outstanding:
                    self.probed(probe.relay, message.value if message.ok else None)
            case WakeupMessage():
                pass
            case PoisonMessage():
                self.log.error("a message failed twice: {}", type(message.poisonMessage).__name__)
            case _:
                self.log.warning("rejected {}: unknown message for the relay monitor",
                                 type(message).__name__)
                if self.init.relays:
                    self._commit(self.init.relays[0], [ev.MessageRejected(
                        actor="relay-monitor", message_type=type(message).__name__,
                        reason="unknown message for the relay monitor")])

    def _start(self, init: m.RelayMonitorInit) -> None:
        logs.configure(init.log)
        self.init = init
        self.log = logger.bind(actor="relay-monitor")
        recorder = open_recorder(init.store)
        last_selected: tuple[int, str] | None = None  # of a log written before selections were numbered
        for relay in init.relays:
            writer = StreamWriter(recorder, relay_stream(init.node_id, relay), self.timers.incarnation,
                                  {"node_id": init.node_id, "actor": "relay-monitor"})
            self.writers[relay] = writer
            self.windows[relay] = Window()
            self.runs[relay] = ProbeRun()
            state = self.states[relay] = writer.replay(apply_relay, RelayState(relay=relay))
            if state.selected and not state.selection:  # ever selected, before numbering: read back
                tail = read_tail(recorder, writer.stream_id, writer.position,
                                 lambda records: any(isinstance(r.event, ev.RelaySelected) for r in records))
                chosen = [r.global_position for r in tail if isinstance(r.event, ev.RelaySelected)]
                if chosen and (last_selected is None or chosen[-1] > last_selected[0]):
                    last_selected = (chosen[-1], relay)
        numbered = [relay for relay in init.relays if self.states[relay].selection]
        if numbered:  # every numbered selection is newer than any unnumbered one
            self.selected = max(numbered, key=lambda relay: self.states[relay].selection)
        else:
            self.selected = last_selected[1] if last_selected else None
        if self.selected:
            self.send(self.parent, m.RelayChanged(self.selected, self.states[self.selected].rtt_ms, None))
        if init.relays:
            self.wakeupAfter(timedelta(0), self.timers.arm(PROBE))

    def _arm(self) -> None:
        assert self.init is not None
        self.wakeupAfter(timedelta(seconds=self.init.config.relay_monitor.probe_interval_s),
                         self.timers.arm(PROBE))

    def _commit(self, relay: str, events: list[Event]) -> None:
        if any(not isinstance(event, ev.RelayProbed) for event in events):
            self._write_run(relay)  # a change: what the run counted comes before it
        for record in self.writers[relay].append(events, "probe-round"):
            self.states[relay] = apply_relay(self.states[relay], record.event)

    def _degraded(self, relay: str, rtt_ms: float | None, reason: str) -> None:
        self._commit(relay, [ev.RelayDegraded(relay=relay, rtt_ms=rtt_ms, reason=reason)])
        self.degraded_reasons[relay] = reason

    def _write_run(self, relay: str) -> None:
        counted = self.runs[relay].take(relay)
        if counted is not None:
            for record in self.writers[relay].append([counted], "probe-round"):
                self.states[relay] = apply_relay(self.states[relay], record.event)

    def _suspected(self, suspicion: m.RelaySuspected) -> None:
        """A connection's path through ``relay`` went silent: probe it now, not at the next
        tick, with as many probes as make it dead (its death is still this monitor's call)."""
        assert self.init is not None
        relay = suspicion.relay
        if relay not in self.windows or relay in self.dead or relay in self.suspected:
            return
        self.log.info("relay {} suspected by a connection ({}): probing it now", relay,
                      str(suspicion.reason)[:200])
        self.suspected.add(relay)
        if self.outstanding == 0:
            self.send_round()  # else close_round sends one as soon as the current round is in

    def send_round(self) -> None:
        """One probe tick: every probe of every relay at once, through the edge; a suspected
        relay gets the misses that would make it dead, at once."""
        assert self.init is not None
        config = self.init.config.relay_monitor
        self.round += 1
        suspected, self.suspected = self.suspected, set()
        self.bursts, self.sent, self.answered = {}, {}, {}
        for relay in self.init.relays:
            misses = self.windows[relay].misses
            if relay not in self.dead and (misses or relay in suspected):
                # A miss may be loss: the relay dies only if a whole burst is lost as well, a
                # burst as long as the run its recent loss makes unlikely by chance; after a
                # lost burst that no other relay's answers explained, the rest of the run a
                # lossy uplink would need.
                probes = max(config.death_confirm_probes, self._dead_after(relay))
                if misses >= config.death_confirm_probes:
                    probes = max(probes, self._uplink_dead_after(relay) - misses)
                self.sent[relay] = max(probes, config.probes_per_round)
        bursting = bool(self.sent)
        for relay in self.init.relays:
            if relay not in self.sent:
                # With a burst out, the others are its witnesses: one answering a whole burst
                # shows that this node's uplink works.
                witness = bursting and relay not in self.dead
                self.sent[relay] = max(config.probes_per_round, config.death_confirm_probes if witness else 0)
            if self.sent[relay] >= config.death_confirm_probes:
                self.bursts[relay] = self.windows[relay].misses + self.sent[relay]
        for relay in self.init.relays:
            for _ in range(self.sent[relay]):
                self.outstanding += 1
                self.send(self.init.edge, fx.ProbeRelay(tag=f"round/{self.round}", relay=relay,
                                                       timeout_s=config.probe_timeout_s))

    def probed(self, relay: str, rtt: float | None) -> None:
        window = self.windows.get(relay)
        if window is not None:
            assert self.init is not None
            outcomes = self.outcomes.setdefault(
                relay, deque(maxlen=self.init.config.relay_monitor.loss_history_probes))
            outcomes.append(rtt is None)
            window.probes += 1
            if rtt is not None:
                window.misses = 0
                self.answered[relay] = self.answered.get(relay, 0) + 1
                window.rtts.append(rtt)
            else:
                window.misses += 1
        self.outstanding -= 1
        if self.outstanding == 0:
            self.close_round()

    def close_round(self) -> None:
        """Records (and decides) when the window is full or a relay died."""
        assert self.init is not None
        config = self.init.config.relay_monitor
        self.ticks += 1
        dead = set()
        for relay, window in self.windows.items():
            if relay in self.answered:
                # Answers come back before the timeouts of the same round: a relay that answered
                # is alive, its round's later misses are loss, not the start of a silence.
                window.misses = 0
            if relay in self.dead and window.misses:
                dead.add(relay)  # dead until it answers
                continue
            needed = self._dead_after(relay) if self._uplink_clean(relay) else self._uplink_dead_after(relay)
            burst_lost = window.misses >= self.bursts.get(relay, window.misses + 1)
            if window.misses >= needed and burst_lost:
                dead.add(relay)
                self.death_misses[relay] = needed
        if self.selected not in dead:
            self.death_recorded = False
        selected = self.selected  # a dead selected relay's death is recorded by record()
        if self.ticks * config.probe_interval_s >= config.record_interval_s or self._urgent(dead):
            self.record(dead)
        every = set(self.init.relays)
        if self.dead == every and dead != every:
            # Every relay was silent and one answers again: most likely this node's uplink is
            # back. Connections that could not reach their peers retry now, not at their backoff.
            self.send(self.parent, m.RelaysReachable())
        for relay in self.dead - dead:
            # Back: the probes lost while it was dead are its death, not loss it will have; counted
            # as loss they would make its next death take up to dead_after_misses_max misses.
            self.outcomes[relay] = deque((False,), maxlen=config.loss_history_probes)
        newly, self.dead = dead - self.dead, dead
        for relay in sorted(newly - {selected, self.selected}):
            self._left(relay)
        self.suspected -= dead
        if self.suspected:
            self.send_round()  # a suspicion that came in while this round was out

    def _dead_after(self, relay: str) -> int:
        """Misses in a row that make ``relay`` dead: more when its recent probes met loss."""
        assert self.init is not None
        config = self.init.config.relay_monitor
        window, outcomes = self.windows.get(relay), self.outcomes.get(relay)
        if window is None or not outcomes:
            return config.dead_after_misses
        before = list(outcomes)[:max(0, len(outcomes) - window.misses)]  # the current run aside
        loss = sum(before) / len(before) if before else 0.0
        if loss <= 0.0:
            return config.dead_after_misses
        if loss >= 1.0:
            return config.dead_after_misses_max
        needed = math.ceil(math.log(config.dead_false_alarm) / math.log(loss))
        return min(config.dead_after_misses_max, max(config.dead_after_misses, needed))

    def _uplink_clean(self, relay: str) -> bool:
        """Another relay answered every probe of a burst this round: this node's uplink works."""
        assert self.init is not None
        confirm = self.init.config.relay_monitor.death_confirm_probes
        return any(other != relay and sent >= confirm and self.answered.get(other, 0) == sent
                   for other, sent in self.sent.items())

    def _uplink_dead_after(self, relay: str) -> int:
        """Misses in a row that make ``relay`` dead when the uplink itself may be lossy."""
        assert self.init is not None
        config = self.init.config.relay_monitor
        assumed = math.ceil(math.log(config.dead_false_alarm) / math.log(config.uplink_assumed_loss))
        return max(self._dead_after(relay), assumed)

    def _left(self, relay: str) -> None:
        """A relay that is not ours died: connections the peer's side put there move to ours.

        (The two ends of a pair share one relay session, on the relay of whoever asked
        first, so a connection can sit on a relay this node did not select.)"""
        assert self.init is not None
        misses = self.death_misses.get(relay, self.init.config.relay_monitor.dead_after_misses)
        # Its death is a fact (once, when it happens): a connection the peer's side put there
        # moves because of it, and `diagnose` names it.
        self._degraded(relay, None, f"no answer to {misses} probes in a row")
        if self.selected is None or self.selected in self.dead:
            return
        self.log.info("relay {} stopped answering; connections on it move to {}", relay, self.selected)
        self.send(self.parent, m.RelayChanged(self.selected, self.states[self.selected].rtt_ms, relay))

    def _urgent(self, dead: set[str]) -> bool:
        """No relay selected yet, or the selected one died: a state change, not a sample."""
        alive = any(window.rtts for relay, window in self.windows.items() if relay not in dead)
        if self.selected is None:
            return alive
        return self.selected in dead and (alive or not self.death_recorded)

    def record(self, dead: set[str]) -> None:
        assert self.init is not None
        config = self.init.config.relay_monitor
        rtts: dict[str, float | None] = {}
        windows = dict(self.windows)
        for relay in self.init.relays:
            window = self.windows[relay]
            rtts[relay] = None if relay in dead else window.median()
            run = self.runs[relay]
            if run.unchanged(window, self.states[relay].degraded, config):
                run.add(window, config.record_interval_s)  # changed nothing: counted
                if run.windows * config.record_interval_s >= config.record_max_s - 1e-9:
                    self._write_run(relay)
            else:
                self._write_run(relay)
                self._commit(relay, [ev.RelayProbed(relay=relay, probes=window.probes,
                                                    answered=len(window.rtts), rtt_ms=window.median())])
                run.written(window)
            self.windows[relay] = Window(misses=window.misses)
        self.ticks = 0
        if self.selected is not None:
            # A dead relay's quality too: the connections must not weigh a switch onto it by
            # the figures of a window from before it died. And the worse of the window's loss
            # and the last probes': loss that began late in the window is what the relay has now.
            window = windows[self.selected]
            alive = window.probes and self.selected not in dead
            loss = 1.0
            if alive:
                recent = self.outcomes.get(self.selected) or (False,)
                loss = max(1 - len(window.rtts) / window.probes, sum(recent) / len(recent))
            self.send(self.parent, m.RelayQuality(self.selected, rtts[self.selected], loss, window.probes))
        degraded, choice = choose_relay(self.selected, rtts, config)
        previous = self.selected
        if degraded and previous is not None:
            rtt = rtts[previous]
            misses = self.death_misses.get(previous, config.dead_after_misses)
            reason = (f"no answer to {misses} probes in a row" if previous in dead else
                      "no answer" if rtt is None else
                      f"round trip {rtt:.1f} ms above {config.degraded_rtt_ms:.0f} ms")
            if not (self.states[previous].degraded and self.degraded_reasons.get(previous) == reason):
                self._degraded(previous, rtt, reason)  # not again while nothing changed
            self.death_recorded = previous in dead
        if choice is None:
            return
        number = max(state.selection for state in self.states.values()) + 1
        self._commit(choice.relay, [ev.RelaySelected(relay=choice.relay, rtt_ms=choice.rtt_ms,
                                                     previous_relay=previous, reason=choice.reason,
                                                     selection=number)])
        self.selected = choice.relay
        self.death_recorded = False
        self.log.info("selected relay {}: {}", choice.relay, choice.reason)
        self.send(self.parent, m.RelayChanged(choice.relay, choice.rtt_ms, previous))
