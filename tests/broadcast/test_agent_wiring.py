"""agent/broadcast.py's decisions, with a fake emulator (the real one is in test_agent_broadcast)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import agent.broadcast as wiring


class _FakeEmulator:
    made: list[_FakeEmulator] = []

    def __init__(self, config: Any) -> None:
        self.config = config
        self.peer_sets: list[Any] = []
        self.running = False
        _FakeEmulator.made.append(self)

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def set_peers(self, peers: Any) -> None:
        self.peer_sets.append(dict(peers) if isinstance(peers, dict) else tuple(peers))


def test_starts_once_follows_peers_and_restarts_on_a_new_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeEmulator.made.clear()
    index = {"lr0": 7}

    def nametoindex(name: str) -> int:
        if name not in index:
            raise OSError("no such device")
        return index[name]

    monkeypatch.setattr(wiring, "BroadcastEmulator", _FakeEmulator)
    monkeypatch.setattr(wiring.socket, "if_nametoindex", nametoindex)
    agent = SimpleNamespace(config=SimpleNamespace(interface="lr0"))
    wire = wiring.BroadcastWiring(agent, (4445,))  # type: ignore[arg-type]

    wire._apply(None, "", {})  # no interface yet
    assert _FakeEmulator.made == []
    wire._apply("10.66.0.1", "10.66.0.0/16", {"10.66.0.2": "10.66.0.1"})
    wire._apply("10.66.0.1", "10.66.0.0/16", {"10.66.0.2": "10.66.0.1"})  # unchanged: no call
    [first] = _FakeEmulator.made
    assert first.running and first.config.virtual_ip == "10.66.0.1" and first.config.ports == (4445,)
    assert first.peer_sets == [{"10.66.0.2": "10.66.0.1"}]
    wire._apply("10.66.0.1", "", {})  # every party left
    assert first.peer_sets[-1] == ()

    index["lr0"] = 9  # wireguard-go died and the interface was made again
    wire._apply("10.66.0.1", "10.66.0.0/16", {"10.66.0.3": "10.66.0.1"})
    assert not first.running
    second = _FakeEmulator.made[-1]
    assert second is not first and second.running and second.peer_sets == [{"10.66.0.3": "10.66.0.1"}]
    del index["lr0"]  # gone
    wire._apply(None, "", {})
    assert not second.running and wire.emulator is None


def test_counters_enter_the_log_once_per_interval_and_port_with_traffic() -> None:
    import asyncio

    from events.types import BroadcastCountersSampled

    totals: dict[tuple[str, int], dict[str, int]] = {}
    appended: list[list[Any]] = []

    async def append(events: list[Any]) -> None:
        appended.append(events)

    agent = SimpleNamespace(config=SimpleNamespace(interface="lr0"), node_id="n1", _append=append)
    wire = wiring.BroadcastWiring(agent, (27015,), (("239.255.255.250", 1900),))  # type: ignore[arg-type]
    wire.emulator = SimpleNamespace(port_counters=lambda: {k: dict(v) for k, v in totals.items()},
                                    counters=lambda: {"captured": 7})  # type: ignore[assignment]

    def counts(**values: int) -> dict[str, int]:
        return {"captured": 0, "forwarded": 0, "received": 0, "reemitted": 0, "dropped": 0, **values}

    totals[("broadcast", 27015)] = counts(captured=3, forwarded=6)
    totals[("239.255.255.250", 1900)] = counts(received=2, reemitted=1, dropped=1)
    asyncio.run(wire._sample())
    [first] = appended
    assert [(e.destination, e.port, e.captured, e.forwarded, e.received, e.reemitted, e.dropped)
            for e in first] == [("239.255.255.250", 1900, 0, 0, 2, 1, 1), ("broadcast", 27015, 3, 6, 0, 0, 0)]
    assert all(isinstance(e, BroadcastCountersSampled) and e.node_id == "n1" for e in first)

    asyncio.run(wire._sample())  # nothing new: nothing written
    assert len(appended) == 1
    totals[("broadcast", 27015)] = counts(captured=4, forwarded=8)  # one more datagram, two peers
    asyncio.run(wire._sample())
    assert [(e.port, e.captured, e.forwarded) for e in appended[-1]] == [(27015, 1, 2)]

    shown = wire.status()
    assert shown["groups"] == ["239.255.255.250:1900"] and shown["ports"] == [27015]
    assert {"destination": "broadcast", "port": 27015, **counts(captured=4, forwarded=8)} in shown["by_port"]


def test_a_failed_write_keeps_the_growth_for_the_next_interval() -> None:
    import asyncio

    appended: list[list[Any]] = []
    failing = [True]

    async def append(events: list[Any]) -> None:
        if failing[0]:
            raise OSError("disk full")
        appended.append(events)

    agent = SimpleNamespace(config=SimpleNamespace(interface="lr0"), node_id="n1", _append=append)
    wire = wiring.BroadcastWiring(agent, (27015,))  # type: ignore[arg-type]
    grown = {"captured": 2, "forwarded": 2, "received": 0, "reemitted": 0, "dropped": 0}
    wire.emulator = SimpleNamespace(  # type: ignore[assignment]
        port_counters=lambda: {("broadcast", 27015): dict(grown)})
    with pytest.raises(OSError):
        asyncio.run(wire._sample())
    failing[0] = False
    asyncio.run(wire._sample())
    assert [(e.captured, e.forwarded) for e in appended[0]] == [(2, 2)]
