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
