"""The agent's broadcast wiring follows a party change at once, not at its next one-second
refresh: a game that broadcast as soon as a new peer answered pings lost its first
broadcasts to an emulator that did not know the peer yet."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

import agent.broadcast as wiring


def test_a_party_change_reaches_the_emulator_within_a_tenth_of_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    wanted: dict[str, Any] = {"peers": {}}
    applied: list[tuple[float, dict[str, str]]] = []
    monkeypatch.setattr(wiring, "desired",
                        lambda _agent: ("10.66.0.1", "10.66.0.0/16", dict(wanted["peers"])))

    async def scenario() -> float:
        wires = wiring.BroadcastWiring(SimpleNamespace(), (4445,))  # type: ignore[arg-type]
        monkeypatch.setattr(wires, "_apply", lambda _a, _s, peers: applied.append((time.monotonic(), peers)))
        wires.start()
        await asyncio.sleep(0.2)  # the first refresh ran; the next is a second away
        wanted["peers"] = {"10.66.0.2": "10.66.0.1"}  # the store now has the peer who joined
        changed_at = time.monotonic()
        wires.parties_changed()
        await asyncio.sleep(0.3)
        await wires.stop()
        return changed_at

    changed_at = asyncio.run(scenario())
    seen = [at - changed_at for at, peers in applied if peers]
    assert seen and seen[0] < 0.1, (seen, applied)


def test_after_a_change_the_store_is_followed_closely_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer's party events may be written a moment after the push that announced it."""
    wanted: dict[str, Any] = {"peers": {}}
    applied: list[tuple[float, dict[str, str]]] = []
    monkeypatch.setattr(wiring, "desired",
                        lambda _agent: ("10.66.0.1", "10.66.0.0/16", dict(wanted["peers"])))

    async def scenario() -> float:
        wires = wiring.BroadcastWiring(SimpleNamespace(), (4445,))  # type: ignore[arg-type]
        monkeypatch.setattr(wires, "_apply", lambda _a, _s, peers: applied.append((time.monotonic(), peers)))
        wires.start()
        await asyncio.sleep(0.2)
        wires.parties_changed()  # the push came first ...
        await asyncio.sleep(0.2)
        wanted["peers"] = {"10.66.0.2": "10.66.0.1"}  # ... the store follows
        written_at = time.monotonic()
        await asyncio.sleep(0.3)
        await wires.stop()
        return written_at

    written_at = asyncio.run(scenario())
    seen = [at - written_at for at, peers in applied if peers]
    assert seen and seen[0] < 0.15, (seen, applied)
