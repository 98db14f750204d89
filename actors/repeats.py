"""Repeats are counted, not written again: the runs a connection holds in memory.

A metric window whose figures match the last recorded sample, or a retry of the direct
path that fails for the same reason as the one before it, joins a run. A run becomes
one counted event (``MetricsSampled`` with ``windows``, ``DirectPathRetriesRepeated``
with ``count``) when something changes, when the connection changes state or path, or
once it has lasted its configured maximum. A crash loses at most that much of a count;
never a transition. Everything here is pure bookkeeping: the actor writes the events.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from actors.config import ConnectionConfig
from events import types as ev


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def within(value: float | None, recorded: float | None, absolute: float, ratio: float) -> bool:
    """``value`` is ``recorded`` give or take ``absolute`` or ``ratio`` of it (the larger)."""
    if value is None or recorded is None:
        return value is None and recorded is None
    return abs(value - recorded) <= max(absolute, ratio * abs(recorded))


@dataclass(frozen=True)
class Window:
    """One metric window's figures, as measured."""

    probes: int
    lost: int
    latencies: tuple[float, ...]
    rx_bytes: int
    tx_bytes: int
    probe_error: str
    first_at: str  # when the window began (ISO 8601, UTC)

    @classmethod
    def measure(cls, latencies: list[float], lost: int, rx_bytes: int, tx_bytes: int, probe_error: str,
                window_s: float) -> Window:
        began = datetime.now(UTC) - timedelta(seconds=window_s)
        return cls(len(latencies) + lost, lost, tuple(latencies), rx_bytes, tx_bytes, probe_error,
                   began.isoformat(timespec="milliseconds"))

    @property
    def latency_ms(self) -> float | None:
        return sum(self.latencies) / len(self.latencies) if self.latencies else None

    @property
    def jitter_ms(self) -> float | None:
        pairs = list(itertools.pairwise(self.latencies))
        return sum(abs(a - b) for a, b in pairs) / len(pairs) if pairs else None

    @property
    def loss(self) -> float:
        return self.lost / self.probes if self.probes else 0.0

    def same_as(self, recorded: Window, cfg: ConnectionConfig) -> bool:
        return (within(self.latency_ms, recorded.latency_ms, cfg.metrics_same_ms, cfg.metrics_same_ratio)
                and within(self.jitter_ms, recorded.jitter_ms, cfg.metrics_same_ms, cfg.metrics_same_ratio)
                and abs(self.loss - recorded.loss) <= cfg.metrics_same_loss
                and self.probe_error == recorded.probe_error)


def quality(latency_ms: float | None, jitter_ms: float | None, loss: float) -> float:
    score = 100.0 - (latency_ms or 0.0) / 10 - (jitter_ms or 0.0) / 5 - loss * 100
    return round(max(0.0, min(100.0, score)), 1)


def sample_of(windows: list[Window], party_id: str, peer_id: str, window_s: float,
              counted: bool) -> ev.MetricsSampled:
    """One ``MetricsSampled`` for consecutive windows: their sums, and averages of their figures.

    ``counted``: a run of windows that matched the last recorded sample (it carries the run's
    start, ``first_at``); otherwise one window that changed something."""
    probes = sum(w.probes for w in windows)
    lost = sum(w.lost for w in windows)
    answered = [w for w in windows if w.latencies]
    latency = (sum(w.latency_ms or 0.0 for w in answered) / len(answered)) if answered else None
    jitters = [j for w in windows if (j := w.jitter_ms) is not None]
    jitter = sum(jitters) / len(jitters) if jitters else None
    loss = lost / probes if probes else 0.0
    last = windows[-1]
    return ev.MetricsSampled(party_id=party_id, peer_id=peer_id, window_s=window_s * len(windows),
                             probes=probes, latency_ms=latency, jitter_ms=jitter, loss=loss,
                             rx_bytes=last.rx_bytes, tx_bytes=last.tx_bytes,
                             quality=quality(latency, jitter, loss), probe_error=last.probe_error,
                             windows=len(windows), first_at=windows[0].first_at if counted else "")


@dataclass
class SampleRuns:
    """The last recorded window and the run of windows that matched it since."""

    recorded: Window | None = None
    run: list[Window] = field(default_factory=list)

    def add(self, window: Window, cfg: ConnectionConfig) -> list[tuple[list[Window], bool]]:
        """The samples to write now, oldest first: (windows, counted)."""
        if self.recorded is not None and window.same_as(self.recorded, cfg):
            self.run.append(window)
            if len(self.run) * cfg.metrics_interval_s >= cfg.metrics_record_max_s - 1e-9:
                return [(self.take(), True)]
            return []
        self.recorded = window
        pending = self.take()
        return [(pending, True), ([window], False)] if pending else [([window], False)]

    def take(self) -> list[Window]:
        run, self.run = self.run, []
        return run


@dataclass
class RetryRun:
    """Failed retries of the direct path after the written one, all for ``reason``."""

    reason: str
    count: int = 0
    first_at: str = ""
    last_at: str = ""

    def add(self) -> None:
        moment = now_iso()
        self.first_at = self.first_at or moment
        self.last_at = moment
        self.count += 1

    def take(self, party_id: str, peer_id: str) -> ev.DirectPathRetriesRepeated | None:
        if not self.count:
            return None
        event = ev.DirectPathRetriesRepeated(party_id=party_id, peer_id=peer_id, reason=self.reason,
                                             count=self.count, first_at=self.first_at, last_at=self.last_at)
        self.count, self.first_at, self.last_at = 0, "", ""
        return event
