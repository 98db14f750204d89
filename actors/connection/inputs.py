"""The decision inputs that the transitions do not say, kept apart from the probe memory:
what a clean stop records (``DecisionInputsRecorded``) and a start resumes from, so that a
restart makes the same next decisions. Pure functions of the memory, the clocks and the
folded state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors import messages as m
from actors.connection.detection import Probing
from actors.connection.facts import UP, Ids
from actors.repeats import RetryRun
from events import types as ev
from events.fold import ConnectionState, DecisionInputs


@dataclass
class Memory:
    """Every input of a decision besides the folded state and the probe memory."""

    retries: int = 0  # of this failed spell
    quality_switch_at: float | None = None  # the last path switch for quality (thespian time)
    relay_quality: m.RelayQuality | None = None  # the selected relay's, from the monitor
    offered_relay: str | None = None  # the relay of the peer's offer, until joined
    # An offer that came while an attempt was in flight: (relay, session), handled after it.
    pending_offer: tuple[str, str | None] | None = None
    # The held session on a relay that failed an allocation: every allocation reports it
    # until a new session opens, so the control server's pair affinity never hands it back.
    dead_session: str | None = None
    retry_run: RetryRun | None = None  # open after a failed retry of the direct path
    due: dict[str, float] = field(default_factory=dict)  # when each decision timer fires (thespian time)


def record(ids: Ids, state: ConnectionState, probing: Probing, memory: Memory, now: float,
           wall: float) -> ev.DecisionInputsRecorded:
    """The inputs as of ``now`` (thespian time) and ``wall`` (UNIX time)."""
    quality, switched = memory.relay_quality, memory.quality_switch_at
    up = state.state in UP
    return ev.DecisionInputsRecorded(
        **ids.base(),
        # Not up, the windows are never read: the way up clears them.
        windows=tuple((path or "", "".join("-" if lost else "+" for lost in outcomes))
                      for path, outcomes in sorted(probing.outcomes.items(), key=lambda i: i[0] or "")
                      if up),
        # Nor are a failed connection's lost probes (its way out resets them): an unreachable
        # peer writes nothing on the metrics beat.
        lost_probes=0.0 if state.state == ev.FAILED else probing.lost,
        slow_answers=probing.slow, slow_path=probing.slow_path, recent_probes=probing.history,
        retries=memory.retries, quality_switch_age_s=None if switched is None else now - switched,
        relay_quality=None if quality is None else (quality.relay, quality.loss, quality.probes),
        offered_relay=memory.offered_relay, pending_offer=memory.pending_offer,
        dead_session=memory.dead_session, retry_run=memory.retry_run.reason if memory.retry_run else None,
        timers=tuple((kind, max(0.0, at - now)) for kind, at in sorted(memory.due.items())),
        written_at=wall)


def key(inputs: ev.DecisionInputsRecorded, memory: Memory) -> tuple[Any, ...]:
    """The inputs without what only time changes (ages, timers)."""
    return (inputs.windows, inputs.lost_probes, inputs.slow_answers, inputs.slow_path,
            inputs.recent_probes, inputs.retries, memory.quality_switch_at, inputs.relay_quality,
            inputs.offered_relay, inputs.pending_offer, inputs.dead_session, inputs.retry_run)


def probes_changed(now: ev.DecisionInputsRecorded, recorded: DecisionInputs) -> bool:
    """The probes changed a window that holds (or held at the last record) lost probes: a
    steady clean path, or an unreachable peer, is not written again and again."""
    def lossy(windows: tuple[tuple[str, str], ...], lost: float) -> bool:
        return lost > 0 or any("-" in outcomes for _, outcomes in windows)
    probes = (now.windows, now.lost_probes, now.slow_answers, now.slow_path, now.recent_probes)
    return (lossy(now.windows, now.lost_probes) or lossy(recorded.windows, recorded.lost_probes)) \
        and probes != (recorded.windows, recorded.lost_probes, recorded.slow_answers,
                       recorded.slow_path, recorded.recent_probes)


def restore(inputs: DecisionInputs, probing: Probing, now: float,
            wall: float) -> tuple[Memory, dict[str, float]]:
    """Into ``probing``: the recorded probe memory. Returned: the memory, and the time left of
    each decision timer (less the time from the record to ``wall``)."""
    gap = max(0.0, wall - inputs.written_at)
    probing.outcomes = {path or None: [outcome == "-" for outcome in outcomes]
                        for path, outcomes in inputs.windows}
    probing.lost, probing.slow = inputs.lost_probes, inputs.slow_answers
    probing.slow_path = inputs.slow_path
    probing.history = inputs.recent_probes
    quality, age = inputs.relay_quality, inputs.quality_switch_age_s
    memory = Memory(
        retries=inputs.retries, quality_switch_at=None if age is None else now - age - gap,
        relay_quality=None if quality is None else m.RelayQuality(quality[0], None, *quality[1:]),
        offered_relay=inputs.offered_relay, pending_offer=inputs.pending_offer,
        dead_session=inputs.dead_session,
        retry_run=RetryRun(inputs.retry_run) if inputs.retry_run is not None else None)
    return memory, {kind: left - gap for kind, left in inputs.timers}
