"""Relay choice for the relay monitor: the best relay, switched only with hysteresis."""

from __future__ import annotations

from collections.abc import Mapping

MIN_GAIN_MS = 10.0
MAX_RATIO = 2 / 3


def best_relay(rtts: Mapping[str, float | None]) -> str | None:
    """The answering relay with the lowest round-trip time (ties: by name, for determinism)."""
    answered = [(rtt, relay) for relay, rtt in rtts.items() if rtt is not None]
    return min(answered)[1] if answered else None


def should_switch(current_rtt: float | None, candidate_rtt: float | None,
                  min_gain_ms: float = MIN_GAIN_MS, max_ratio: float = MAX_RATIO) -> bool:
    """Switch only if the candidate is at least 10 ms better and under 2/3 of the current RTT.

    A current relay that stopped answering (None) is always worth leaving for one that answers.
    """
    if candidate_rtt is None:
        return False
    if current_rtt is None:
        return True
    return current_rtt - candidate_rtt >= min_gain_ms and candidate_rtt < current_rtt * max_ratio


def choose(current: str | None, rtts: Mapping[str, float | None]) -> str | None:
    """The relay to use next: ``current`` unless another one clears the hysteresis."""
    best = best_relay(rtts)
    if current is None or best is None or best == current:
        return best if current is None or rtts.get(current) is None else current
    return best if should_switch(rtts.get(current), rtts[best]) else current
