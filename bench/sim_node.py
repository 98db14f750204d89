"""What the real actors write: a node's actors on the simulated network, with a virtual clock.

``capture(relayed, peers)`` starts the production actors (``actors.system.start_node``,
``ActorConfig()`` defaults, the ``mesh.sim`` adapters, an in-memory log) with two relays
and ``peers`` remote peers, all reachable directly or (``relayed``) none of them
(behind port-restricted NATs whose punches fail, so the connections sit on a relay and
retry the direct path every ``direct_retry_s``). Thespian's clock is replaced by a
virtual one, so an hour runs in seconds. Every probe interval the path round trips move
by up to ``NOISE`` of their base (what a steady home link does); the actors decide what
to record. It returns, as ``(stream_id, event)`` lists:

- ``setup``: the node's start, the party, every peer joined and connected, and the rest
  of the first ``WARMUP_S``;
- ``hour``: one further hour of steady operation;
- episodes, each from its start until ``SETTLE_S`` later: ``drop`` (direct node: one
  peer's path lost for ``OUTAGE_S``, it fails over to a relay and comes back direct;
  relayed node: the selected relay dies for ``OUTAGE_S``, every connection moves to the
  other relay), ``membership`` (a peer leaves and joins again) and ``restart`` (the
  node stops cleanly and starts again).

``bench/log.py`` builds its year from these.
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

import thespian.system.simpleSystemBase as simple_base
import thespian.system.timing as thespian_timing
from loguru import logger
from thespian.actors import ActorExitRequest

import mesh.sim as sim
from actors import messages as m
from actors.config import ActorConfig
from actors.journal import memory_recorder
from actors.runtime import Pump
from actors.system import start_node, start_system
from events.base import Event

RELAYS = ("203.0.113.10:3478", "203.0.113.11:3478")
LOCAL = "192.0.2.10:51820"
PARTY = "p1"
NODE = "local"
DIRECT_MS, RELAY_MS = (22.0, 45.0)
NOISE = 0.2  # each probe interval, a path's round trip is its base give or take 20 %
WARMUP_S = 900.0
OUTAGE_S = 20.0
SETTLE_S = 300.0
STEP_S = 0.5  # the relay monitor's probe interval: every timer fires on time


class Clock:
    """Thespian's clock, moved by ``advance`` only."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self._saved = (thespian_timing.currentTime, simple_base.currentTime)
        thespian_timing.currentTime = self.time
        simple_base.currentTime = self.time

    def time(self) -> float:
        return self.now

    def restore(self) -> None:
        thespian_timing.currentTime, simple_base.currentTime = self._saved


def candidate(index: int) -> str:
    return f"198.51.100.{20 + index}:{51820 + index}"


@dataclass
class Capture:
    relayed: bool
    peers: int
    setup: list[tuple[str, Event]] = field(default_factory=list)
    hour: list[tuple[str, Event]] = field(default_factory=list)
    episodes: dict[str, list[tuple[str, Event]]] = field(default_factory=dict)


class SimNode:
    def __init__(self, relayed: bool, peers: int, seed: int = 10) -> None:
        self.relayed, self.peers = relayed, peers
        self.name = f"bench{uuid.uuid4().hex[:10]}"
        self.net = sim.reset(self.name)
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.system: Any = None
        self.address: Any = None
        self.pump: Any = None
        self.seen = 0
        self.outage: str | None = None

    def start(self) -> None:
        self.system = start_system()
        self.pump = self.system.createActor(Pump)
        spec = m.AdapterSpec.of("mesh.sim:adapters", network_name=self.name, node=NODE, candidates=(LOCAL,),
                                nat_type="port_restricted" if self.relayed else "open")
        store = m.StoreSpec(f"memory://{self.name}")
        self.address = start_node(self.system, m.StartNode(NODE, store, spec, RELAYS, ActorConfig(),
                                                           m.LogSpec("ERROR", os.devnull)))

    def stop(self) -> None:
        if self.system is not None:
            self.system.tell(self.address, ActorExitRequest())
            self.system.shutdown()
            self.system = None

    def close(self) -> None:
        self.stop()
        self.clock.restore()

    def ask(self, message: Any) -> Any:
        reply = self.system.ask(self.address, message)
        self.system.tell(self.pump, None)
        return reply

    def announce(self, index: int) -> None:
        self.system.tell(self.address, m.PeerAnnounced(
            PARTY, f"peer{index:02d}", f"player {index}", f"key-{index:02d}",
            nat_type="port_restricted" if self.relayed else "open", candidates=(candidate(index),)))

    def jitter(self) -> None:
        """New round trips for this probe interval (a relay in an outage stays down)."""
        for index in range(self.peers):
            self.net.set_latency(f"10.66.0.{index + 2}", DIRECT_MS * (1 + self.rng.uniform(-NOISE, NOISE)))
        for relay in RELAYS:
            if relay != self.outage:
                self.net.set_relay(relay, RELAY_MS * (1 + self.rng.uniform(-NOISE, NOISE)))

    def advance(self, seconds: float) -> None:
        target = self.clock.now + seconds
        ticks = 0
        while self.clock.now < target - 1e-9:
            if ticks % int(5.0 / STEP_S) == 0:
                self.jitter()
            self.clock.now = min(self.clock.now + STEP_S, target)
            self.ask(m.Ping())
            ticks += 1

    def written(self) -> list[tuple[str, Event]]:
        """What the actors appended since the last call, in log order."""
        records = memory_recorder(self.name).read_all(self.seen)
        batch = [(record.stream_id, record.event) for record in records]
        self.seen += len(batch)
        return batch


def capture(relayed: bool, peers: int, quiet: bool = True) -> Capture:
    """``quiet``: drop loguru's handlers (the actors' log lines are not what is measured)."""
    if quiet:
        logger.remove()
    node = SimNode(relayed, peers)
    result = Capture(relayed, peers)
    try:
        node.jitter()
        node.start()
        node.ask(m.CreateParty(PARTY, "friday LAN", "me", "Me"))
        if relayed:
            node.net.block(*(candidate(index) for index in range(peers)))
        for index in range(peers):
            node.announce(index)
        node.advance(WARMUP_S)
        result.setup = node.written()
        node.advance(3600.0)
        result.hour = node.written()
        if relayed:
            status = node.ask(m.StatusQuery())
            node.outage = status.relay or RELAYS[0]  # the selected relay dies
            node.net.set_relay(node.outage, None)
        else:
            node.net.block(candidate(0))
        node.advance(OUTAGE_S)
        if relayed:
            node.outage = None
        else:
            node.net.unblock(candidate(0))
        node.advance(SETTLE_S - OUTAGE_S)
        result.episodes["drop"] = node.written()
        node.system.tell(node.address, m.PeerDeparted(PARTY, "peer01"))
        node.advance(5.0)
        node.announce(1)
        node.advance(SETTLE_S - 5.0)
        result.episodes["membership"] = node.written()
        node.stop()
        node.start()
        node.advance(SETTLE_S)
        result.episodes["restart"] = node.written()
    finally:
        node.close()
    return result
