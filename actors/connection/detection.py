"""Detection and quality: the probe memory and what one observation decides.

Every function here reads the folded state, the probe memory it is given (and updates that
memory only), the observation and the config: no actor, no store, no send. ``observe`` is
the rule for one observation: the events it decides and whether the path is to be checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from actors import messages as m
from actors.config import ConnectionConfig
from actors.connection.facts import UP, Ids, reconnect, transition
from events import types as ev
from events.base import Event
from events.fold import ConnectionState
from mesh.interfaces import PeerStats

ACTIVE = (ev.CONNECTING, ev.CONNECTED, ev.DEGRADED, ev.FAILED)


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
    # WireGuard's counters at the last watch reading, and when rx last grew (thespian time).
    counters: tuple[int, int] | None = None
    rx_grew_at: float | None = None
    silent_since: float = 0.0  # rx unchanged since (the first reading counts as a change)
    # A check of a suspect path: its probes still out, how many were lost, and why it runs.
    checking: int = 0
    check_lost: int = 0
    check_reason: str = ""
    checking_answered: bool = False
    check_needed: int = 0  # lost probes that make the path dead, from the path's loss
    check_sent: int = 0
    # The loss window of each path (True for a lost probe): a path switched back to keeps
    # what it showed, so a lossy direct path is not taken for a clean one on its return.
    outcomes: dict[str | None, list[bool]] = field(default_factory=dict)
    history: str = ""  # the last probe outcomes, oldest first: "+" answered, "-" lost, "~" endpoint moved
    # The answers in a row above ``degraded_latency_ms`` on ``slow_path`` (a faster answer, a lost
    # probe or another path starts anew).
    slow: int = 0
    slow_path: str | None = None
    stats: PeerStats | None = None  # WireGuard's counters for the peer, at the last reading
    read_at: float | None = None  # thespian time of the last counter reading
    sending_at: float | None = None  # the last reading that saw more than an idle tunnel's tx
    idle_armed: bool = False  # the armed probe waits ``idle_probe_interval_s``
    watched_endpoint: str | None = None  # the decided endpoint when the reading in flight was asked for


def remember_probe(probing: Probing, outcome: str, cfg: ConnectionConfig) -> None:
    probing.history = (probing.history + outcome)[-cfg.probe_history:]


def count_probe(probing: Probing, state: ConnectionState, lost: bool, cfg: ConnectionConfig) -> None:
    """Into the loss window of the path ``state`` is on, while up."""
    if state.state not in UP:
        return  # an outage's lost probes say nothing of the path's quality once it is back
    outcomes = probing.outcomes.setdefault(state.path, [])
    outcomes.append(lost)
    del outcomes[:-cfg.loss_window_probes]


def window_loss(probing: Probing, path: str | None, cfg: ConnectionConfig) -> float | None:
    """Loss over the window of ``path``, once it holds at least half a window of probes."""
    outcomes = probing.outcomes.get(path, [])
    if len(outcomes) < max(1, cfg.loss_window_probes // 2):
        return None
    return sum(outcomes) / len(outcomes)


def lossy(probing: Probing, committed: ConnectionState, state: ConnectionState,
          cfg: ConnectionConfig) -> str | None:
    """Why a connected connection is now degraded by loss, or None (``committed``: the state
    the store acknowledged, whose path the window is read on; ``state``: with the batch's
    decisions so far)."""
    loss = window_loss(probing, committed.path, cfg)
    if state.state != ev.CONNECTED or loss is None or loss < cfg.degraded_loss:
        return None
    return f"loss {loss:.0%} over the last {len(probing.outcomes[state.path])} probes"


def slow_run(probing: Probing, path: str | None, latency: float, cfg: ConnectionConfig) -> bool:
    """Whether the last ``latency_probes_to_degrade`` answers in a row on ``path``, this one
    included, all came later than ``degraded_latency_ms``."""
    if probing.slow_path != path:
        probing.slow, probing.slow_path = 0, path
    probing.slow = probing.slow + 1 if latency > cfg.degraded_latency_ms else 0
    return probing.slow >= cfg.latency_probes_to_degrade


def relay_path_no_better(probing: Probing, loss: float, cfg: ConnectionConfig) -> bool:
    """This connection's own last window on the relay lost about as much: the loss is on a
    stretch both paths share (the peer's uplink, which the relay monitor's probes from
    this side do not cross), and a move would only trade one lossy path for another."""
    outcomes = probing.outcomes.get(ev.RELAY, [])
    if len(outcomes) < max(1, cfg.loss_window_probes // 2):
        return False
    return sum(outcomes) / len(outcomes) > loss - cfg.switch_loss_margin


def check_size(loss: float | None, cfg: ConnectionConfig) -> int:
    """The probes a check of a suspect path sends: enough that the path's loss (at least
    ``check_assumed_loss``) loses them all less than ``check_false_alarm`` of the time."""
    loss = max(loss or 0.0, cfg.check_assumed_loss)
    needed = cfg.confirm_probes
    if 0 < loss < 1:
        needed = max(needed, min(cfg.confirm_probes_max,
                                 math.ceil(math.log(cfg.check_false_alarm) / math.log(loss))))
    return needed


def check_timeout(probing: Probing, latency_ms: float | None, cfg: ConnectionConfig) -> float:
    """Three of the path's last round trips, within the configured bounds."""
    recent = max(probing.window[-3:], default=latency_ms)
    return cfg.confirm_timeout_s if recent is None else \
        min(cfg.confirm_timeout_s, max(cfg.confirm_timeout_min_s, 3 * recent / 1000))


def idle(probing: Probing, state: ConnectionState, now: float, cfg: ConnectionConfig) -> bool:
    """Up, its last probes all answered, the peer heard recently, and this side sending
    next to nothing for a while."""
    if state.state not in UP or probing.rx_grew_at is None \
            or now - probing.rx_grew_at > cfg.keepalive_s + cfg.probe_interval_s:
        return False
    answered = probing.history.replace("~", "")[-cfg.idle_after_answered:]
    if len(answered) < cfg.idle_after_answered or "-" in answered:
        return False
    return probing.sending_at is None or now - probing.sending_at > cfg.probe_interval_s


def observe(ids: Ids, committed: ConnectionState, state: ConnectionState, probing: Probing, item: Any,
            weight: float, busy: bool, retries: int, cfg: ConnectionConfig) -> tuple[list[Event], bool]:
    """What one observation decides: the events, and whether the path is to be checked (up,
    and its lost probes reached ``lost_probes_before_action``). ``state`` is ``committed``
    with the batch's decisions so far; ``busy``: an operation is in flight."""
    if state.state not in ACTIVE:
        return [], False
    threshold = cfg.degraded_latency_ms

    def change(to_state: str, reason: str, latency: float | None = None) -> list[Event]:
        return [transition(ids, state, to_state, reason, latency, probing.stats, probing.history)]

    if isinstance(item, m.TrafficObserved):
        probing.traffic = (item.rx_bytes, item.tx_bytes)
        return [], False
    if isinstance(item, m.LatencyObserved):
        latency = float(item.latency_ms)
        probing.lost = 0.0
        remember_probe(probing, "+", cfg)
        probing.window.append(latency)
        count_probe(probing, committed, False, cfg)
        if state.state in (ev.CONNECTING, ev.FAILED):
            probing.slow_path = None  # a path that is back starts its run anew
        high = latency > threshold
        slow = slow_run(probing, state.path, latency, cfg)
        if state.state in (ev.CONNECTING, ev.FAILED):
            lead = "first probe answered"
            if state.state == ev.FAILED:
                lead = "peer answered again" + (f" (retry {retries})" if retries else "")
            tail = f" (above {threshold:.0f} ms)" if high else ""
            return change(ev.DEGRADED if slow else ev.CONNECTED, f"{lead} in {latency:.1f} ms{tail}",
                          latency), False
        if state.state == ev.CONNECTED and slow:
            run = min(probing.slow, cfg.latency_probes_to_degrade)
            return change(ev.DEGRADED, f"latency {latency:.1f} ms above {threshold:.0f} ms "
                                       f"({run} probes in a row)", latency), False
        why = lossy(probing, committed, state, cfg)
        if why is not None:
            return change(ev.DEGRADED, why, latency), False
        loss = window_loss(probing, committed.path, cfg)
        if state.state == ev.DEGRADED and not high and (loss is None or loss <= cfg.recovered_loss):
            better = (f"loss down to {loss:.0%}" if state.reason.startswith("loss") and loss is not None
                      else f"latency improved to {latency:.1f} ms")
            return change(ev.CONNECTED, better, latency), False
        return [], False
    # ProbeFailed
    remember_probe(probing, "-", cfg)
    probing.slow = 0
    probing.lost += weight
    probing.window_lost += 1
    count_probe(probing, committed, True, cfg)
    if item.reason != m.ProbeFailed().reason:
        probing.last_error = item.reason
    why = lossy(probing, committed, state, cfg)
    if why is not None:
        return change(ev.DEGRADED, why), False
    needed = cfg.lost_probes_before_action
    if probing.lost < needed - 1e-9 or state.state == ev.FAILED or busy:
        return [], False  # an operation in flight decides the path for now
    probing.lost = 0.0
    lost = f"{needed} probes lost"
    if state.state in UP:
        return [], True  # after the batch: check the path, then fail over or reconnect
    # The budget counts the reconnects since the last time the peer was up or (re)joined.
    attempt = state.reconnects + 1 if state.reason.startswith("reconnect attempt") else 1
    if attempt <= cfg.attempts_before_failed:
        return reconnect(ids, state, attempt, cfg.attempts_before_failed, lost, probing.stats,
                         probing.history), False
    unreachable = f"{lost} after {cfg.attempts_before_failed} reconnect attempts; retrying every path"
    return change(ev.FAILED, unreachable), False
