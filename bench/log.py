"""Log growth benchmark: a year of one 16-peer node's events at default settings, in one run.

    .venv/bin/python bench/log.py [--days 365] [--peers 16] [--repeat 5] [--keep 30d]

What a node writes is not modelled here: ``bench/sim_node.py`` runs the production
actors (``ActorConfig()`` defaults, the simulated network adapters, a virtual clock) and
records what they append: the node's start and first ``WARMUP_S`` (setup), one steady
hour, and three episodes (a path lost for 20 s, a member leaving and joining again, a
clean restart of the node). Round trips move by up to 20 % every probe interval, so
the actors' tolerances decide what is counted and what is written. Two nodes are
captured: one whose peers are all reachable directly, one whose peers are all behind
NATs that refuse the punch (on a relay, retrying the direct path every 30 s).

The year is then written, each node in its own SQLite database through the real
``EventStore`` (group commit, the same encoding and indexes as a node's log), with a
simulated clock, an hour at a time with ``append_many`` (every event of an hour gets
the hour's end as ``recorded_at``): hour 0 is the setup, every hour the steady hour's
events, and the episodes at these rates (the one assumption of the model):

- ``DROPS_PER_PEER_DAY`` (2): direct node, one peer's path is lost (the episode is
  replayed on that peer); relayed node, the selected relay dies (every connection
  moves), so each peer loses its path twice a day either way;
- ``MEMBERSHIP_CHANGES_PER_DAY`` (2): a member leaves and joins again;
- a clean restart every ``RESTART_EVERY_DAYS`` (7).

``store.retention.upkeep`` (prune with ``--keep``, then refresh snapshots) runs at the
end of every simulated day (``serve`` runs it hourly; a daily run keeps up to a day more
of samples, so the size after a year is an upper bound).

It prints, in one run, the captured mix (rows an hour by stream kind), and:

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
import dataclasses
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

from actors.journal import StreamWriter, read_tail
from bench.result import Figure, emit, load_average
from bench.sim_node import PARTY, RELAYS, Capture, capture
from events.base import Event
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
from events.streams import (
    METRICS,
    PEER,
    metrics_stream,
    node_stream,
    parse_stream_id,
    party_stream,
    peer_stream,
    relay_stream,
)
from store import PendingEvent, migrate
from store.retention import log_stats, parse_keep, upkeep
from store.sql import EventStore

MB = 1_000_000
NODE_ID = "local"
DROPS_PER_PEER_DAY = 2
MEMBERSHIP_CHANGES_PER_DAY = 2
RESTART_EVERY_DAYS = 7
START = datetime(2026, 1, 1, tzinfo=UTC)
DIRECT_DAY_TARGET = RELAYED_DAY_TARGET = 5 * MB
YEAR_SIZE_TARGET = 500 * MB
RESTART_TARGET_S = 2.0
RESTART_RATIO_TARGET = 2.0
Written = list[tuple[str, Event]]


@dataclass
class Node:
    """One simulated node: what its actors wrote, the positions of its streams, its random source."""

    capture: Capture
    rng: random.Random = field(default_factory=lambda: random.Random(10))
    positions: dict[str, int] = field(default_factory=dict)

    @property
    def relayed(self) -> bool:
        return self.capture.relayed

    @property
    def peers(self) -> int:
        return self.capture.peers

    def peer_ids(self) -> list[str]:
        return [f"peer{index:02d}" for index in range(self.peers)]


def on_peer(written: Written, peer_id: str) -> Written:
    """An episode captured on one peer, as it happens to ``peer_id``."""
    moved: Written = []
    for stream, event in written:
        kind = parse_stream_id(stream).kind
        if kind in (PEER, METRICS) and hasattr(event, "peer_id"):
            stream = f"{stream.rsplit(':', 1)[0]}:{peer_id}"
            event = dataclasses.replace(event, peer_id=peer_id)  # type: ignore[type-var]
        moved.append((stream, event))
    return moved


def simulate_hour(node: Node, store: EventStore, index: int) -> int:
    """Append one hour of the node's log; returns the number of events."""
    taken = node.capture
    written: Written = list(taken.setup) if index == 0 else []
    written += taken.hour
    day, hour_of_day = divmod(index, 24)
    rng = node.rng
    if node.relayed:
        if rng.random() < DROPS_PER_PEER_DAY / 24:
            written += taken.episodes["drop"]
    else:
        dropped = "peer00"  # the peer the episode was captured on
        for peer in node.peer_ids():
            if rng.random() < DROPS_PER_PEER_DAY / 24:
                episode = taken.episodes["drop"]
                written += episode if peer == dropped else on_peer(episode, peer)
    if rng.random() < MEMBERSHIP_CHANGES_PER_DAY / 24:
        written += taken.episodes["membership"]
    if hour_of_day == 3 and day % RESTART_EVERY_DAYS == RESTART_EVERY_DAYS - 1:
        written += taken.episodes["restart"]
    by_stream: dict[str, list[PendingEvent]] = {}
    for stream, event in written:
        by_stream.setdefault(stream, []).append(PendingEvent(event, {"node_id": NODE_ID, "actor": "bench"},
                                                             os.urandom(16).hex()))
    positions = node.positions
    writes = [(stream, events, positions.get(stream, 0)) for stream, events in by_stream.items()]
    store.append_many(writes)
    for stream, events, expected in writes:
        positions[stream] = expected + len(events)
    return len(written)


def mix(taken: Capture) -> str:
    """The steady hour's rows by stream kind and type, as the actors wrote them."""
    counts: dict[str, int] = {}
    for stream, event in taken.hour:
        key = f"{parse_stream_id(stream).kind}/{event.event_type}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key} {count}" for key, count in sorted(counts.items(), key=lambda kv: -kv[1]))


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


def simulate(directory: Path, name: str, taken: Capture, hours: int, keep: timedelta,
             upkeep_daily: bool = True) -> Simulation:
    path = directory / f"{name}.db"
    url = f"sqlite:///{path}"
    migrate(url)
    node = Node(taken)
    clock = [START]
    simulation = Simulation(node, path, url)
    started = time.perf_counter()
    with EventStore(url, clock=lambda: clock[0]) as store:
        for index in range(hours):
            clock[0] = START + timedelta(hours=index + 1)
            simulation.events += simulate_hour(node, store, index)
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
        StreamWriter(store, node_stream(NODE_ID), "r", {}).replay(apply_node, NodeState())
        StreamWriter(store, party_stream(NODE_ID, PARTY), "r", {}).replay(apply_party, PartyState())
        for peer in node.peer_ids():
            connection = StreamWriter(store, peer_stream(NODE_ID, PARTY, peer), "r", {})
            connection.replay(apply_connection, ConnectionState())
            # Its newest sample, and the connection's records after it (actors/connection/actor.py).
            samples = metrics_stream(NODE_ID, PARTY, peer)
            head = store.stream_position(samples)
            newest = store.read_stream(samples, head) if head else []
            if newest:
                read_tail(store, connection.stream_id, connection.position,
                          lambda tail, at=newest[-1].global_position: tail[0].global_position < at)
        for relay in RELAYS:
            writer = StreamWriter(store, relay_stream(NODE_ID, relay), "r", {})
            state = writer.replay(apply_relay, RelayState(relay=relay))
            if state.selected and not state.selection:  # a selection before numbering: read back
                read_tail(store, writer.stream_id, writer.position,
                          lambda tail: any(r.event_type == "RelaySelected" for r in tail))
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
    load_before = load_average()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lanrage-bench-log-") as name:
        directory = Path(name)
        for label, relayed in (("direct", False), ("relayed", True)):
            taken = capture(relayed, args.peers)
            year = simulate(directory, f"{label}-year", taken, args.days * 24, keep)
            fresh = simulate(directory, f"{label}-fresh", taken, 1, keep, upkeep_daily=False)
            times = medians({"year": lambda year=year: restart(year),
                             "fresh": lambda fresh=fresh: restart(fresh)}, args.repeat)
            with EventStore(year.url) as store:
                stats = log_stats(store)
            results[label] = {"year": year, "fresh": fresh, "times": times, "stats": stats,
                              "per_day": per_day(year), "node": taken}
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
        print(f"  about {row_bytes:.0f} bytes a row on disk: 5 MB a day holds "
              f"{DIRECT_DAY_TARGET / row_bytes:,.0f} rows")
        print(f"  the actors' steady hour ({len(result['node'].hour)} rows): {mix(result['node'])}")
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
    figures = []
    for label, result in results.items():
        times, stats = result["times"], result["stats"]
        year_mb = (stats.database_bytes or 0) / MB
        figures += [
            Figure(f"{label} node: written per node-day", result["per_day"] / MB, "MB", None, "",
                   "≤ 5 MB", result["per_day"] <= DIRECT_DAY_TARGET),
            Figure(f"{label} node: database after {args.days} days", year_mb, "MB", None, "",
                   "< 500 MB", year_mb * MB < YEAR_SIZE_TARGET, 1),
            Figure(f"{label} node: restart with the year's log", times["year"] * 1000, "ms",
                   times["fresh"] * 1000, "restart with a fresh log", "≤ 2,000 ms and ≤ 2x the baseline",
                   times["year"] <= RESTART_TARGET_S
                   and times["year"] / times["fresh"] <= RESTART_RATIO_TARGET, 1),
        ]
    emit("log", figures, load_before)
    if not all(passed for _, passed, _ in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
