"""The relay monitor's choice: hysteresis of 10 ms and 2/3."""

from __future__ import annotations

from mesh.relay.selection import best_relay, choose, should_switch


def test_hysteresis() -> None:
    assert should_switch(30.0, 19.0)  # 11 ms better and under 20
    assert not should_switch(30.0, 21.0)  # 9 ms better
    assert should_switch(12.0, 1.0)  # 11 ms better and under 8
    assert not should_switch(40.0, 29.0)  # 11 ms better but not under 2/3 (26.7)
    assert should_switch(None, 50.0)
    assert not should_switch(10.0, None)


def test_choose_keeps_current_unless_clearly_better_and_leaves_a_dead_relay() -> None:
    assert choose(None, {"r1": 20.0, "r2": 5.0}) == "r2"
    assert choose("r1", {"r1": 20.0, "r2": 12.0}) == "r1"
    assert choose("r1", {"r1": 40.0, "r2": 12.0}) == "r2"
    assert choose("r1", {"r1": None, "r2": 80.0}) == "r2"
    assert choose("r1", {"r1": None, "r2": None}) is None
    assert best_relay({"a": 3.0, "b": 3.0}) == "a"
