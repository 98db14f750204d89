"""The relay monitor's pure selection rule (hysteresis)."""

from __future__ import annotations

import pytest

from actors.config import RelayMonitorConfig
from actors.relay_monitor import choose_relay

A, B, C = "198.51.100.1:3478", "198.51.100.2:3478", "198.51.100.3:3478"
CONFIG = RelayMonitorConfig()  # degraded above 150 ms, >= 10 ms better and < 2/3


@pytest.mark.parametrize(("selected", "rtts", "degraded", "switch_to"), [
    (None, {A: 50.0, B: 40.0}, False, B),  # first choice: the lowest
    (None, {A: None, B: None}, False, None),  # nothing answers: no choice
    (A, {A: 140.0, B: 20.0}, False, None),  # healthy: never switch, however good the other
    (A, {A: 160.0, B: 150.0}, True, None),  # degraded, 10 ms better but not below 2/3
    (A, {A: 160.0, B: 107.0}, True, None),  # 2/3 of 160 is 106.67: not below
    (A, {A: 160.0, B: 106.0}, True, B),
    (A, {A: 160.0, B: 140.0, C: 100.0}, True, C),  # the best alternative
    (A, {A: None, B: 400.0}, True, B),  # silent: any answering relay
    (A, {A: None, B: None}, True, None),
    (A, {A: 20.0, B: 25.0}, False, None),
    (A, {A: 1000.0, B: 995.0}, True, None),  # 5 ms better: no
])
def test_choose_relay(selected, rtts, degraded: bool, switch_to) -> None:
    is_degraded, choice = choose_relay(selected, rtts, CONFIG)
    assert is_degraded == degraded
    assert (choice.relay if choice else None) == switch_to


def test_near_equal_relays_never_flap() -> None:
    selected, switches = A, 0
    for step in range(200):
        jitter = 3.0 if step % 2 else -3.0
        rtts = {A: 160.0 + jitter, B: 160.0 - jitter}
        _, choice = choose_relay(selected, rtts, CONFIG)
        if choice:
            selected, switches = choice.relay, switches + 1
    assert switches == 0
