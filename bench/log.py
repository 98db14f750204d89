"""Log growth benchmark: a year of one 16-peer node's events at default settings, in one run.

    .venv/bin/python bench/log.py [--days 365] [--peers 16] [--repeat 5] [--keep 30d]

Two nodes are simulated, each in its own SQLite database written through the real
``EventStore`` (group commit, the same encoding and indexes as a node's log), with a
simulated clock: one whose peers are all direct and one whose peers are all relayed.
Events are appended an hour at a time with ``append_many`` (every event of that hour
gets the hour's end as ``recorded_at``), and ``store.retention.upkeep`` (prune with
``--keep``, then refresh snapshots) runs at the end of every simulated day. ``serve``
runs it hourly; a daily run keeps up to a day more of samples, so the size after a
year is an upper bound.

What a node writes, at ``actors/config.py`` defaults, repeats counted (issue 10):

- per peer, its metrics stream: one ``MetricsSampled`` per ``metrics_interval_s``
  (60 s): 1,440 a day.
- per peer, its connection stream: the start (attempt, path, punch, WireGuard, two
  state changes), then ``DROPS_PER_PEER_DAY`` (2) drop-and-reconnect episodes a day
  of 8 events each (degraded, reconnect attempt, connecting, attempt, path chosen,
  punch attempted and its outcome or the relay, WireGuard configured, connected).
- a relayed peer also retries the direct path every ``direct_retry_s`` (30 s), failing
  for the same reason: counted, so each episode adds the first failed retry and punch
  and, when the run of failures ends, one record of each with its count and time span
  (4 events; modelled by ``*Repeats`` event types carrying ``repeats``, ``first_at``,
  ``last_at``).
- the relay monitor, per relay (``RELAYS``: 2): a probe round that changes nothing
  adds nothing, so one ``RelayProbed`` an hour (``RELAY_CHANGES_PER_DAY``: 24, the
  round trip moving past the recording threshold about hourly) and one
  ``RelaySelected`` a day per node.
- the party: ``MEMBERSHIP_CHANGES_PER_DAY`` (2) leave-and-rejoin of a member (left,
  address released, joined, address allocated); the node: a restart a week
  (stopped, started, NAT detected).

It prints, in one run:

1. bytes written per node-day: the database file's growth (pages, indexes included)
   per simulated day over days 2..30, before retention removes anything;
2. the database size after ``--days`` with retention on;
3. restart time: the streams the actors replay at start (node, party, every peer
   connection with ``apply_connection``, every relay) folded through
   ``StreamWriter.replay`` with snapshots, on a fresh ``EventStore``, with the year's
   log against a fresh log (the same node after its first hour); medians of
   ``--repeat`` alternating rounds.

Targets: <= 5 MB (10^6 bytes) written per node-day, direct and relayed; < 500 MB after a
year; restart <= 2 s and <= 2 x the fresh restart. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from actors.config import ConnectionConfig
from actors.journal import StreamWriter
from events import types as ev
from events.base import Event, register
from events.fold import (
    ConnectionState,
    NodeState,
    PartyState,
    RelayState,
    apply_connection,
    apply_node,
    apply_party,
    apply_relay,
)
from events.streams import metrics_stream, node_stream, party_stream, peer_stream, relay_stream
from store import PendingEvent, migrate
from store.retention import log_stats, parse_keep, upkeep
from store.sql import EventStore

MB = 1_000_000
RELAYS = ("203.0.113.10:3478", "203.0.113.11:3478")
DROPS_PER_PEER_DAY = 2
RELAY_CHANGES_PER_DAY = 24
MEMBERSHIP_CHANGES_PER_DAY = 2
RESTART_EVERY_DAYS = 7
START = datetime(2026, 1, 1, tzinfo=UTC)
DIRECT_DAY_TARGET = RELAYED_DAY_TARGET = 5 * MB
YEAR_SIZE_TARGET = 500 * MB
RESTART_TARGET_S = 2.0
RESTART_RATIO_TARGET = 2.0


@register
@dataclass(frozen=True, kw_only=True)
class DirectPathRetriedRepeats(ev.DirectPathRetried):
    """The counted form: the same failed retry ``repeats`` times between two times."""

    repeats: int = 1
    first_at: str = ""
    last_at: str = ""


@register
@dataclass(frozen=True, kw_only=True)
class HolePunchAttemptedRepeats(ev.HolePunchAttempted):
    repeats: int = 1
    first_at: str = ""
    last_at: str = ""


@dataclass
class Node:
    """One simulated node: its ids, the positions of its streams and its random source."""

    relayed: bool
    peers: int
    node_id: str = "3f9a1c2b7d4e"
    party_id: str = "9c1e5f7a2b3d4c6e"
    rng: random.Random = field(default_factory=lambda: random.Random(10))
    positions: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)

    def peer_ids(self) -> list[str]:
        return [f"{index:02d}{'b7e2a9c4d1f3e5'}" for index in range(self.peers)]


def _pending(node: Node, actor: str, causation: str, event: Event) -> PendingEvent:
    return PendingEvent(event, {"node_id": node.node_id, "actor": actor, "causation": causation},
                        os.urandom(16).hex())


class Hour:
    """The events of one simulated hour, by stream, in the order the actors write them."""

    def __init__(self, node: Node, moment: datetime) -> None:
        self.node = node
        self.moment = moment
        self.writes: dict[str, list[PendingEvent]] = {}

    def add(self, stream: str, actor: str, causation: str, *events: Event) -> None:
        self.writes.setdefault(stream, []).extend(_pending(self.node, actor, causation, e) for e in events)

    def commit(self, store: EventStore) -> int:
        positions = self.node.positions
        writes = [(stream, events, positions.get(stream, 0)) for stream, events in self.writes.items()]
        store.append_many(writes)
        for stream, events, expected in writes:
            positions[stream] = expected + len(events)
        return sum(len(events) for _, events, _ in writes)


def _peer_actor(node: Node, peer: str) -> str:
    return f"peer-connection/{node.party_id}/{peer}"


def _endpoint(node: Node, index: int) -> str:
    return f"198.51.100.{20 + index}:{51820 + index}"


def _connect(node: Node, hour: Hour, peer: str, index: int, attempt: int, causation: str) -> None:
    """The events of one connection attempt through to connected, direct or relayed."""
    party = node.party_id
    relay = RELAYS[index % len(RELAYS)]
    events: list[Event] = [
        ev.ConnectionAttemptStarted(party_id=party, peer_id=peer, attempt=attempt,
                                    path=ev.RELAY if node.relayed else ev.DIRECT),
        ev.PathChosen(party_id=party, peer_id=peer, path=ev.RELAY if node.relayed else ev.DIRECT,
                      reason="relay first, punch behind it" if node.relayed else "peer has a public endpoint",
                      endpoint=None if node.relayed else _endpoint(node, index),
                      relay=relay if node.relayed else None),
        ev.HolePunchAttempted(party_id=party, peer_id=peer, local_candidates=("192.0.2.10:51820",),
                              remote_candidates=(_endpoint(node, index),)),
    ]
    if node.relayed:
        events.append(ev.HolePunchFailed(party_id=party, peer_id=peer, reason="no answer within 5.0 s",
                                         elapsed_ms=5000.0))
    else:
        events.append(ev.HolePunchSucceeded(party_id=party, peer_id=peer, endpoint=_endpoint(node, index),
                                            rtt_ms=node.rng.uniform(15, 40),
                                            elapsed_ms=node.rng.uniform(20, 90)))
    events.append(ev.WireGuardPeerConfigured(
        party_id=party, peer_id=peer, public_key="B" * 43 + "=", endpoint=relay if node.relayed else
        _endpoint(node, index), allowed_ips=(f"10.66.0.{index + 2}/32",)))
    events.append(ev.ConnectionStateChanged(
        party_id=party, peer_id=peer, from_state=ev.CONNECTING, to_state=ev.CONNECTED, reason="handshake",
        path=ev.RELAY if node.relayed else ev.DIRECT,
        endpoint=None if node.relayed else _endpoint(node, index), relay=relay if node.relayed else None,
        latency_ms=node.rng.uniform(15, 60)))
    hour.add(peer_stream(node.node_id, party, peer), _peer_actor(node, peer), causation, *events)


def _start(node: Node, hour: Hour) -> None:
    """A node's first start: node facts, the party and its members, every connection."""
    nid, party = node.node_id, node.party_id
    hour.add(node_stream(nid), "node", "node",
             ev.NodeStarted(node_id=nid, public_key="A" * 43 + "=", listen_port=51820,
                            software_version="1.0"),
             ev.NatDetected(node_id=nid, nat_type=ev.NAT_PORT_RESTRICTED, public_ip="192.0.2.10",
                            public_port=51820),
             ev.NodePartyOpened(node_id=nid, party_id=party))
    members: list[Event] = [ev.PartyJoined(party_id=party, name="friday LAN", local_peer_id="local",
                                           subnet="10.66.0.0/16")]
    for index, peer in enumerate(node.peer_ids()):
        members += [ev.PeerJoined(party_id=party, peer_id=peer, name=f"player {index}",
                                  public_key="B" * 43 + "=",
                                  nat_type=ev.NAT_SYMMETRIC if node.relayed else ev.NAT_OPEN),
                    ev.VirtualIpAllocated(party_id=party, peer_id=peer, virtual_ip=f"10.66.0.{index + 2}")]
    hour.add(party_stream(nid, party), f"party/{party}", "join", *members)
    for index, peer in enumerate(node.peer_ids()):
        hour.add(peer_stream(nid, party, peer), _peer_actor(node, peer), "announce",
                 ev.ConnectionStateChanged(party_id=party, peer_id=peer, from_state=None,
                                           to_state=ev.CONNECTING, reason="peer joined"))
        _connect(node, hour, peer, index, 1, "announce")
    for relay in RELAYS:
        hour.add(relay_stream(nid, relay), "relay-monitor", "probe",
                 ev.RelayProbed(relay=relay, probes=180, answered=180, rtt_ms=node.rng.uniform(20, 60)))
    hour.add(relay_stream(nid, RELAYS[0]), "relay-monitor", "probe",
             ev.RelaySelected(relay=RELAYS[0], rtt_ms=25.0, previous_relay=None,
                              reason="lowest round trip (25.0 ms) of 2 relays"))


def _drop(node: Node, hour: Hour, peer: str, index: int) -> None:
    party = node.party_id
    stream, actor = peer_stream(node.node_id, party, peer), _peer_actor(node, peer)
    path = ev.RELAY if node.relayed else ev.DIRECT
    hour.add(stream, actor, "probe",
             ev.ConnectionStateChanged(party_id=party, peer_id=peer, from_state=ev.CONNECTED,
                                       to_state=ev.DEGRADED, reason="3 probes lost", path=path),
             ev.ReconnectAttempted(party_id=party, peer_id=peer, attempt=1, max_attempts=3,
                                   reason="3 probes lost"),
             ev.ConnectionStateChanged(party_id=party, peer_id=peer, from_state=ev.DEGRADED,
                                       to_state=ev.CONNECTING, reason="reconnecting", path=path))
    _connect(node, hour, peer, index, 2, "reconnect")
    if node.relayed:
        # The direct path is retried every 30 s and fails the same way: the first failure of the
        # run, and the run's count and span when it ends (here: at the next drop).
        first = hour.moment.isoformat()
        span = (hour.moment + timedelta(hours=12)).isoformat()
        repeats = int(12 * 3600 / ConnectionConfig().direct_retry_s)
        hour.add(stream, actor, "retry",
                 ev.DirectPathRetried(party_id=party, peer_id=peer, succeeded=False,
                                      reason="no answer within 5.0 s"),
                 ev.HolePunchAttempted(party_id=party, peer_id=peer, local_candidates=("192.0.2.10:51820",),
                                       remote_candidates=(_endpoint(node, index),)),
                 DirectPathRetriedRepeats(party_id=party, peer_id=peer, succeeded=False,
                                          reason="no answer within 5.0 s", repeats=repeats, first_at=first,
                                          last_at=span),
                 HolePunchAttemptedRepeats(party_id=party, peer_id=peer,
                                           local_candidates=("192.0.2.10:51820",),
                                           remote_candidates=(_endpoint(node, index),), repeats=repeats,
                                           first_at=first, last_at=span))


def _metrics(node: Node, hour: Hour) -> None:
    windows = int(3600 / ConnectionConfig().metrics_interval_s)
    rng = node.rng
    for peer in node.peer_ids():
        base = 45.0 if node.relayed else 22.0
        events = []
        for _ in range(windows):
            rx = node.traffic[peer] = node.traffic.get(peer, 0) + rng.randint(2_000, 4_000_000)
            latency, jitter = rng.uniform(base * 0.8, base * 1.3), rng.uniform(0.2, 6.0)
            events.append(ev.MetricsSampled(party_id=node.party_id, peer_id=peer, window_s=60.0, probes=12,
                                            latency_ms=latency, jitter_ms=jitter, loss=0.0, rx_bytes=rx,
                                            tx_bytes=rx // 2,
                                            quality=round(100 - latency / 10 - jitter / 5, 1)))
        hour.add(metrics_stream(node.node_id, node.party_id, peer), _peer_actor(node, peer), "metrics",
                 *events)


def _membership(node: Node, hour: Hour) -> None:
    party = node.party_id
    index = node.rng.randrange(node.peers)
    peer = node.peer_ids()[index]
    hour.add(party_stream(node.node_id, party), f"party/{party}", "control",
             ev.PeerLeft(party_id=party, peer_id=peer, reason="left the party"),
             ev.VirtualIpReleased(party_id=party, peer_id=peer, virtual_ip=f"10.66.0.{index + 2}"),
             ev.PeerJoined(party_id=party, peer_id=peer, name=f"player {index}", public_key="B" * 43 + "=",
                           nat_type=ev.NAT_SYMMETRIC if node.relayed else ev.NAT_OPEN),
             ev.VirtualIpAllocated(party_id=party, peer_id=peer, virtual_ip=f"10.66.0.{index + 2}"))


def _restart(node: Node, hour: Hour) -> None:
    nid = node.node_id
    hour.add(node_stream(nid), "node", "node", ev.NodeStopped(node_id=nid, reason="SIGTERM"),
             ev.NodeStarted(node_id=nid, public_key="A" * 43 + "=", listen_port=51820,
                            software_version="1.0"),
             ev.NatDetected(node_id=nid, nat_type=ev.NAT_PORT_RESTRICTED, public_ip="192.0.2.10",
                            public_port=51820))


def simulate_hour(node: Node, store: EventStore, index: int, moment: datetime) -> int:
    hour = Hour(node, moment)
    if index == 0:
        _start(node, hour)
    day, hour_of_day = divmod(index, 24)
    rng = node.rng
    for peer_index, peer in enumerate(node.peer_ids()):
        if rng.random() < DROPS_PER_PEER_DAY / 24:
            _drop(node, hour, peer, peer_index)
    for relay in RELAYS:
        if rng.random() < RELAY_CHANGES_PER_DAY / 24:
            hour.add(relay_stream(node.node_id, relay), "relay-monitor", "probe",
                     ev.RelayProbed(relay=relay, probes=21_600, answered=21_600, rtt_ms=rng.uniform(20, 60)))
    if hour_of_day == 12:
        relay = RELAYS[day % len(RELAYS)]
        hour.add(relay_stream(node.node_id, relay), "relay-monitor", "probe",
                 ev.RelaySelected(relay=relay, rtt_ms=25.0, previous_relay=RELAYS[(day + 1) % len(RELAYS)],
                                  reason="12.0 ms better (25.0 ms against 37.0 ms)"))
    if rng.random() < MEMBERSHIP_CHANGES_PER_DAY / 24:
        _membership(node, hour)
    if hour_of_day == 3 and day % RESTART_EVERY_DAYS == RESTART_EVERY_DAYS - 1:
        _restart(node, hour)
    _metrics(node, hour)
    return hour.commit(store)


@dataclass
class Simulation:
    node: Node
    path: Path
    url: str
    events: int = 0
    seconds: float = 0.0
    day_sizes: dict[int, int] = field(default_factory=dict)
    pruned: int = 0


def database_bytes(path: Path) -> int:
    """The SQLite database's size in pages (what its file holds once the WAL is checkpointed)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return int(connection.execute("SELECT page_count * page_size FROM pragma_page_count(), "
                                      "pragma_page_size()").fetchone()[0])


def simulate(directory: Path, name: str, relayed: bool, peers: int, hours: int, keep: timedelta,
             upkeep_daily: bool = True) -> Simulation:
    path = directory / f"{name}.db"
    url = f"sqlite:///{path}"
    migrate(url)
    node = Node(relayed=relayed, peers=peers)
    clock = [START]
    simulation = Simulation(node, path, url)
    started = time.perf_counter()
    with EventStore(url, clock=lambda: clock[0]) as store:
        for index in range(hours):
            clock[0] = START + timedelta(hours=index + 1)
            simulation.events += simulate_hour(node, store, index, clock[0])
            if (index + 1) % 24 == 0:
                day = (index + 1) // 24
                if upkeep_daily:
                    simulation.pruned += upkeep(store, keep, now=clock[0]).pruned.rows
                simulation.day_sizes[day] = database_bytes(path)
                if day % 30 == 0:
                    print(f"  {name}: day {day}, {simulation.events:,} events, "
                          f"{simulation.day_sizes[day] / MB:.1f} MB, {time.perf_counter() - started:.0f} s",
                          file=sys.stderr, flush=True)
        if hours % 24:
            upkeep(store, keep, now=clock[0])
    simulation.seconds = time.perf_counter() - started
    return simulation


def restart(simulation: Simulation) -> float:
    """Open the log as a starting node does and fold every stream its actors replay."""
    node = simulation.node
    started = time.perf_counter()
    with EventStore(simulation.url) as store:
        StreamWriter(store, node_stream(node.node_id), "r", {}).replay(apply_node, NodeState())
        StreamWriter(store, party_stream(node.node_id, node.party_id), "r", {}).replay(apply_party,
                                                                                       PartyState())
        for peer in node.peer_ids():
            StreamWriter(store, peer_stream(node.node_id, node.party_id, peer), "r", {}).replay(
                apply_connection, ConnectionState())
        for relay in RELAYS:
            StreamWriter(store, relay_stream(node.node_id, relay), "r", {}).replay(apply_relay,
                                                                                  RelayState(relay=relay))
    return time.perf_counter() - started


def medians(cases: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {label: [] for label in cases}
    labels = list(cases)
    for round_ in range(repeat):
        for label in labels if round_ % 2 == 0 else reversed(labels):
            samples[label].append(cases[label]())
    return {label: statistics.median(values) for label, values in samples.items()}


def per_day(simulation: Simulation) -> float:
    sizes = simulation.day_sizes
    last = min(max(sizes), 30)
    if last < 2:
        raise SystemExit("bench/log.py: simulate at least 2 days to measure bytes per day")
    return (sizes[last] - sizes[1]) / (last - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", default="30d", help="retention window (default 30d)")
    args = parser.parse_args()
    keep = parse_keep(args.keep)
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lanrage-bench-log-") as name:
        directory = Path(name)
        for label, relayed in (("direct", False), ("relayed", True)):
            year = simulate(directory, f"{label}-year", relayed, args.peers, args.days * 24, keep)
            fresh = simulate(directory, f"{label}-fresh", relayed, args.peers, 1, keep, upkeep_daily=False)
            times = medians({"year": lambda year=year: restart(year),
                             "fresh": lambda fresh=fresh: restart(fresh)}, args.repeat)
            with EventStore(year.url) as store:
                stats = log_stats(store)
            results[label] = {"year": year, "fresh": fresh, "times": times, "stats": stats,
                              "per_day": per_day(year)}
    load_after = os.getloadavg()

    print(f"log benchmark: {args.peers} peers, {args.days} simulated days, retention {args.keep}, "
          f"upkeep daily; restart medians of {args.repeat} alternating rounds; SQLite WAL")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f}, on {os.cpu_count()} CPUs")
    checks: list[tuple[str, bool, str]] = []
    for label, result in results.items():
        year, stats, times = result["year"], result["stats"], result["times"]
        rows = sum(kind.rows for kind in stats.kinds)
        print(f"{label} node")
        print(f"  generated {year.events:,} events in {year.seconds:.0f} s "
              f"({year.events / max(year.seconds, 1e-9):,.0f} events/s), pruned {year.pruned:,}")
        print(f"  written per node-day        {result['per_day'] / MB:8.2f} MB "
              f"({year.events / max(args.days, 1):,.0f} events a day)")
        print(f"  database after {args.days} days     {(stats.database_bytes or 0) / MB:8.1f} MB "
              f"({rows:,} rows kept)")
        for kind in stats.kinds:
            print(f"    {kind.kind:<10} {kind.rows:>10,} rows {kind.bytes / MB:8.1f} MB of row text, "
                  f"oldest {kind.oldest.date() if kind.oldest else '-'}")
        daily_events = year.events / max(args.days, 1)
        row_bytes = result["per_day"] / daily_events
        samples = args.peers * 86400 / ConnectionConfig().metrics_interval_s
        budget = DIRECT_DAY_TARGET / row_bytes - (daily_events - samples)
        interval = 86400 * args.peers / budget if budget > 0 else float("inf")
        print(f"  about {row_bytes:.0f} bytes a row on disk: 5 MB a day holds "
              f"{DIRECT_DAY_TARGET / row_bytes:,.0f} rows, i.e. one metric sample per peer every "
              f"{interval:.0f} s beside the rest")
        ratio = times["year"] / times["fresh"]
        print(f"  restart with the year's log {times['year'] * 1000:8.1f} ms; "
              f"fresh {times['fresh'] * 1000:.1f} ms; ratio {ratio:.2f}")
        target = DIRECT_DAY_TARGET if label == "direct" else RELAYED_DAY_TARGET
        checks += [
            (f"{label}: written per node-day <= 5 MB", result["per_day"] <= target,
             f"{result['per_day'] / target:.2f} of the limit"),
            (f"{label}: size after a year < 500 MB", (stats.database_bytes or 0) < YEAR_SIZE_TARGET,
             f"{(stats.database_bytes or 0) / YEAR_SIZE_TARGET:.2f} of the limit"),
            (f"{label}: restart <= 2 s", times["year"] <= RESTART_TARGET_S,
             f"{times['year'] / RESTART_TARGET_S:.3f} of the limit"),
            (f"{label}: restart <= 2 x fresh", ratio <= RESTART_RATIO_TARGET,
             f"{ratio / RESTART_RATIO_TARGET:.2f} of the limit"),
        ]
    print("targets")
    for label, passed, share in checks:
        print(f"  {label:<40} {'PASS' if passed else 'FAIL'} ({share})")
    if not all(passed for _, passed, _ in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
