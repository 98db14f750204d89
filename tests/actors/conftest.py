"""A node on simpleSystemBase, the simulated network, and a virtual clock for thespian's timers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import thespian.system.simpleSystemBase as simple_base
import thespian.system.timing as thespian_timing
from thespian.actors import ActorAddress, ActorExitRequest

import mesh.sim as sim
from actors import messages as m
from actors.config import ActorConfig, ConnectionConfig, RelayMonitorConfig
from actors.journal import memory_recorder, open_recorder
from actors.runtime import Pump
from actors.system import start_node, start_system
from events.base import Event
from events.streams import node_stream, party_stream, peer_stream
from store.base import Recorder

LOCAL = "203.0.113.1:51820"
BOB = "203.0.113.2:51820"
CAROL = "203.0.113.3:51820"
RELAY_A = "198.51.100.1:3478"
RELAY_B = "198.51.100.2:3478"


class VirtualClock:
    """Replaces thespian's clock: wakeupAfter fires when the test advances time, never by itself."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000_000.0
        monkeypatch.setattr(thespian_timing, "currentTime", self.time)
        monkeypatch.setattr(simple_base, "currentTime", self.time)

    def time(self) -> float:
        return self.now


# Fields a setback fills in and every other transition leaves empty: shown only when set.
EVIDENCE_FIELDS = {"last_handshake_age_s": None, "recent_probes": ""}


def describe(event: Event, omit: tuple[str, ...] = ("party_id", "peer_id")) -> str:
    """Every field but the ids the stream already names: asserting these strings asserts the event."""
    payload = {k: v for k, v in event.to_payload().items() if k not in omit
               and not (k in EVIDENCE_FIELDS and v == EVIDENCE_FIELDS[k])}
    return f"{event.event_type}({', '.join(f'{k}={v!r}' for k, v in payload.items())})"


@dataclass
class Node:
    name: str
    clock: VirtualClock
    config: ActorConfig
    relays: tuple[str, ...] = ()
    log_path: str | None = None
    store_url: str | None = None  # None: in memory
    executor: str = "inline"  # or the name of an executor the test registered (actors.edge)
    system: Any = None
    address: ActorAddress | None = None
    pump: ActorAddress | None = None
    seen: dict[str, int] = field(default_factory=dict)

    @property
    def net(self) -> sim.SimNetwork:
        return sim.network(self.name)

    @property
    def store(self) -> m.StoreSpec:
        return m.StoreSpec(self.store_url or f"memory://{self.name}")

    @property
    def recorder(self) -> Recorder:
        return open_recorder(self.store) if self.store_url else memory_recorder(self.name)

    def start(self, spec: m.AdapterSpec | None = None) -> Node:
        self.system = start_system()
        self.pump = self.system.createActor(Pump)
        spec = spec or m.AdapterSpec.of("mesh.sim:adapters", network_name=self.name, node="local",
                                        candidates=(LOCAL,))
        self.address = start_node(self.system, m.StartNode(
            "local", self.store, spec, self.relays, self.config,
            m.LogSpec("DEBUG", self.log_path), self.executor))
        return self

    def stop(self) -> None:
        """A clean stop: the node records NodeStopped."""
        if self.system is not None:
            self.system.tell(self.address, ActorExitRequest())
            self.system.shutdown()
            self.system = None

    def crash(self) -> None:
        """The process dies: nothing is recorded."""
        if self.system is not None:
            self.system.shutdown()
            self.system = None

    def ask(self, message: Any) -> Any:
        """The answer, once every message the question caused has been handled."""
        reply = self.system.ask(self.address, message)
        self.drain()
        return reply

    def tell(self, message: Any) -> None:
        self.system.tell(self.address, message)

    def drain(self) -> None:
        """Run the system until no message is pending (an ask stops at its answer)."""
        self.system.tell(self.pump, None)

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Move virtual time on in steps, letting every due wakeup fire in between."""
        target = self.clock.now + seconds
        while self.clock.now < target - 1e-9:
            self.clock.now = min(self.clock.now + step, target)
            assert isinstance(self.ask(m.Ping()), m.Pong)

    def status(self) -> m.NodeStatus:
        reply = self.ask(m.StatusQuery())
        assert isinstance(reply, m.NodeStatus), reply
        return reply

    def connection(self, party: str, peer: str) -> Any:
        for party_status in self.status().parties:
            for status in party_status.peers:
                if party_status.party_id == party and status.peer_id == peer:
                    return status.connection
        return None

    def events(self, stream: str) -> list[Event]:
        return [r.event for r in self.recorder.read_stream(stream)]

    def described(self, stream: str) -> list[str]:
        omit = ("party_id", "peer_id") if stream.startswith("peer:") else ("party_id",)
        return [describe(e, omit) for e in self.events(stream)]

    def new(self, stream: str) -> list[str]:
        """The events of ``stream`` since the last call (for step-by-step assertions)."""
        events = self.described(stream)
        start, self.seen[stream] = self.seen.get(stream, 0), len(events)
        return events[start:]

    def peer(self, peer_id: str, party: str = "p1") -> str:
        return peer_stream("local", party, peer_id)

    def party(self, party: str = "p1") -> str:
        return party_stream("local", party)

    @property
    def node_stream(self) -> str:
        return node_stream("local")


def make_config(**connection: Any) -> ActorConfig:
    # The scenarios were written around whole probe intervals: the first probe too.
    defaults: dict[str, Any] = {"probe_interval_s": 5.0, "first_probe_s": 5.0, "metrics_interval_s": 3600.0,
                                "direct_retry_s": 30.0}
    return ActorConfig(connection=ConnectionConfig(**{**defaults, **connection}),
                       relay_monitor=RelayMonitorConfig(probe_interval_s=30.0, probes_per_round=3),
                       restart_delay_s=0.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    return VirtualClock(monkeypatch)


@pytest.fixture
def make_node(clock: VirtualClock) -> Iterator[Any]:
    nodes: list[Node] = []

    def make(relays: tuple[str, ...] = (), name: str | None = None,
             log_path: str | None = None, **connection: Any) -> Node:
        name = name or f"t{uuid.uuid4().hex[:10]}"
        if name not in [n.name for n in nodes]:
            sim.reset(name)
        node = Node(name, clock, make_config(**connection), relays, log_path)
        nodes.append(node)
        return node.start()

    try:
        yield make
    finally:
        for node in nodes:
            node.stop()


def joined(make_node: Any, **config: Any) -> Node:
    """alice's node, connected directly to bob, with the production relay monitor."""
    node = make_node(relays=(RELAY_A,), first_probe_s=0.5, **config)
    # The production relay monitor's window (this harness's default probes thrice a record):
    # the relay's loss is measured on 60 probes, as the connection's own on 20.
    node.stop()
    node.config = replace(node.config, relay_monitor=RelayMonitorConfig())
    node.start()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(1)
    assert node.connection("p1", "bob").state == "connected"
    node.new(node.peer("bob"))
    return node
