"""Journal benchmark: the event store against raw sqlite3, in one run.

    .venv/bin/python bench/journal.py [--repeat 5] [--events 50000] [--single 3000] [--replay-events 200000]

Every case runs ``--repeat`` times, in rounds whose order alternates (ABBA), each
on a fresh database in a temporary directory; the figures are medians. Each case
is timed by the wall clock and by the CPU time of this process: on a machine that
other work shares, the CPU figure is what the code costs, the wall figure what a
user gets. Targets: batched appends >= 50,000 events/s (WAL, NORMAL), >= 0.5 of raw
sqlite3 ``executemany`` into the same table, and replay read + decode >= 200,000
events/s. The replay baseline is a raw sqlite3 scan decoding each payload with
``orjson``, the parser the store uses (like with like); the stdlib ``json`` scan is
printed beside it. Replay into the World (decode + fold into every state) is printed
with no target. Every event is a ``MetricsSampled`` of about 170 bytes of JSON.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.result import Figure, emit, load_average
from events import types as ev
from store import EventStore, migrate, open_store
from store.replay import iter_events, replay

BATCH = 100


@dataclass
class Case:
    label: str
    run: Callable[[], tuple[int, float, float]]  # -> (events, wall seconds, cpu seconds)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def measure(self) -> None:
        count, wall, cpu = self.run()
        self.walls.append(count / wall)
        self.cpus.append(count / cpu if cpu > 0 else float("inf"))

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


class Clock:
    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def sample(i: int) -> ev.MetricsSampled:
    return ev.MetricsSampled(party_id="5f2c9a1e", peer_id=f"peer-{i % 16:02d}", window_s=10.0, probes=10,
                             latency_ms=20.0 + (i % 7), jitter_ms=1.25, loss=0.0, rx_bytes=1_000_000 + i,
                             tx_bytes=2_000_000 + i, quality=97.5)


def new_url(directory: Path) -> str:
    return f"sqlite:///{directory / f'{uuid.uuid4().hex}.db'}"


def discard(url: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)


def single(directory: Path, count: int, synchronous: str) -> tuple[int, float, float]:
    url = new_url(directory)
    with open_store(url, synchronous=synchronous) as store:  # type: ignore[arg-type]
        events = [sample(i) for i in range(count)]
        with Clock() as clock:
            for i, event in enumerate(events):
                store.append("peer:bench:a", [event], i)
    discard(url)
    return count, clock.wall, clock.cpu


def batched(directory: Path, count: int, synchronous: str) -> tuple[int, float, float]:
    url = new_url(directory)
    with open_store(url, synchronous=synchronous) as store:  # type: ignore[arg-type]
        events = [sample(i) for i in range(count)]
        with Clock() as clock:
            for offset in range(0, count, BATCH):
                store.append("peer:bench:a", events[offset:offset + BATCH], offset)
    discard(url)
    return count, clock.wall, clock.cpu


group_sizes: dict[str, list[float]] = {}


def group_commit(directory: Path, count: int, synchronous: str, threads: int = 8) -> tuple[int, float, float]:
    """``threads`` appenders, one event per call, each on its own stream."""
    url = new_url(directory)
    per_thread = count // threads
    with open_store(url, synchronous=synchronous) as store:  # type: ignore[arg-type]
        store.batches.clear()

        def work(n: int) -> None:
            for i in range(per_thread):
                store.append(f"peer:bench:{n}", [sample(i)], i)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        with Clock() as clock:
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        group_sizes.setdefault(synchronous, []).append(statistics.mean(store.batches))
    discard(url)
    return per_thread * threads, clock.wall, clock.cpu


def raw_baseline(directory: Path, count: int, encode: bool) -> tuple[int, float, float]:
    """sqlite3 executemany into the same (alembic-made) table, WAL + NORMAL, 100 rows per commit.

    With ``encode`` the timed loop also turns each event into JSON (``json.dumps`` of
    its fields), the least any writer of these events must do; without it the rows
    are prepared before the clock starts.
    """
    url = new_url(directory)
    migrate(url)
    connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    events = [sample(i) for i in range(count)]
    ids = [uuid.uuid4().hex for _ in range(count)]
    sql = ("INSERT INTO events (global_position, stream_id, stream_position, event_type, event_version,"
           " recorded_at, payload, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

    def rows(first: int, last: int) -> list[tuple[object, ...]]:
        return [(i + 1, "peer:bench:a", i + 1, "MetricsSampled", 1, now, json.dumps(vars(events[i])),
                 json.dumps({"event_id": ids[i]})) for i in range(first, last)]

    prepared = None if encode else rows(0, count)
    with Clock() as clock:
        for offset in range(0, count, BATCH):
            chunk = rows(offset, offset + BATCH) if prepared is None else prepared[offset:offset + BATCH]
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(sql, chunk)
            connection.execute("COMMIT")
    connection.close()
    discard(url)
    return count, clock.wall, clock.cpu


def filled(directory: Path, count: int) -> str:
    """A log of ``count`` events in 16 streams, checkpointed, for the read cases."""
    url = new_url(directory)
    with open_store(url) as store:
        for offset in range(0, count, 1000):
            stream = f"peer:bench:{offset // 1000 % 16}"
            chunk = [sample(i) for i in range(offset, min(count, offset + 1000))]
            store.append(stream, chunk, store.stream_position(stream))
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return url


def reading(url: str, count: int, how: Callable[[EventStore], int]) -> tuple[int, float, float]:
    with open_store(url, readonly=True) as store, Clock() as clock:
        seen = how(store)
    assert seen == count, (seen, count)
    return count, clock.wall, clock.cpu


def replay_decode(store: EventStore) -> int:
    """Replay's read path: raw rows from the DBAPI cursor, decoded into events."""
    return sum(1 for _ in iter_events(store))


def replay_world(store: EventStore) -> int:
    """The whole replay: decode and fold every event into the World (events.fold)."""
    return replay(store).position


def read_records(store: EventStore) -> int:
    """``read_all``: paged Core queries into RecordedEvents with metadata (CLI/API path)."""
    return sum(1 for _ in store.read_all())


def raw_json_scan(url: str, count: int,
                  loads: Callable[[str], object] = json.loads) -> tuple[int, float, float]:
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    with Clock() as clock:
        seen = 0
        for row in connection.execute("SELECT global_position, stream_id, event_type, event_version,"
                                      " payload FROM events ORDER BY global_position"):
            loads(row[4])
            seen += 1
    connection.close()
    assert seen == count
    return count, clock.wall, clock.cpu


class PostgresDatabase:
    """A fresh database on the server of ``admin_url`` for the optional PostgreSQL cases."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.admin = create_engine(make_url(admin_url).set(drivername="postgresql+psycopg"),
                                   isolation_level="AUTOCOMMIT")
        self.name = f"lanrage_bench_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = self.admin.url.set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        # An autovacuum worker (another role) can hold the fresh database for a moment.
        from sqlalchemy.exc import DBAPIError

        try:
            for attempt in range(20):
                try:
                    with self.admin.connect() as connection:
                        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}"')
                    return
                except DBAPIError:
                    if attempt == 19:
                        raise
                    time.sleep(0.5)
        finally:
            self.admin.dispose()


def pg_batched(url: str, count: int) -> tuple[int, float, float]:
    with open_store(url) as store:
        stream = f"peer:bench:{uuid.uuid4().hex[:8]}"
        events = [sample(i) for i in range(count)]
        with Clock() as clock:
            for offset in range(0, count, BATCH):
                store.append(stream, events[offset:offset + BATCH], offset)
    return count, clock.wall, clock.cpu


def pg_replay(url: str) -> tuple[int, float, float]:
    with open_store(url, readonly=True) as store, Clock() as clock:
        seen = sum(1 for _ in iter_events(store))
    return seen, clock.wall, clock.cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--single", type=int, default=3_000)
    parser.add_argument("--replay-events", type=int, default=200_000)
    parser.add_argument("--postgres", metavar="URL", help="also measure batched appends and replay "
                        "on PostgreSQL (a fresh database is made on this server and dropped)")
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="lanrage-bench-") as name:
        directory = Path(name)
        log = filled(directory, args.replay_events)
        n, m = args.events, args.single
        cases = [
            Case("single append, NORMAL", lambda: single(directory, m, "NORMAL")),
            Case("single append, FULL", lambda: single(directory, m, "FULL")),
            Case(f"batched x{BATCH}, NORMAL", lambda: batched(directory, n, "NORMAL")),
            Case(f"batched x{BATCH}, FULL", lambda: batched(directory, n, "FULL")),
            Case("group commit 8 threads, NORMAL", lambda: group_commit(directory, 2 * m, "NORMAL")),
            Case("group commit 8 threads, FULL", lambda: group_commit(directory, 2 * m, "FULL")),
            Case("raw executemany, pre-encoded", lambda: raw_baseline(directory, n, False)),
            Case("raw executemany + json.dumps", lambda: raw_baseline(directory, n, True)),
            Case("replay read+decode", lambda: reading(log, args.replay_events, replay_decode)),
            Case("replay into World (fold)", lambda: reading(log, args.replay_events, replay_world)),
            Case("read_all RecordedEvents", lambda: reading(log, args.replay_events, read_records)),
            Case("raw sqlite3 scan + orjson.loads",
                 lambda: raw_json_scan(log, args.replay_events, orjson.loads)),
            Case("raw sqlite3 scan + json.loads", lambda: raw_json_scan(log, args.replay_events)),
        ]
        postgres = PostgresDatabase(args.postgres) if args.postgres else None
        try:
            if postgres is not None:
                pg_url = postgres.url
                cases += [Case("PostgreSQL batched x100", lambda: pg_batched(pg_url, n)),
                          Case("PostgreSQL replay read+decode", lambda: pg_replay(pg_url))]
            for round_ in range(args.repeat):
                for case in cases if round_ % 2 == 0 else reversed(cases):
                    case.measure()
        finally:
            if postgres is not None:
                postgres.drop()
    load_after = os.getloadavg()
    by = {case.label: case for case in cases}

    print(f"journal benchmark: medians of {args.repeat} alternating rounds; {n} events batched, {m} single, "
          f"{args.replay_events} replayed; MetricsSampled (~170 B JSON); SQLite WAL")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f}, on {os.cpu_count()} CPUs")
    print(f"  {'case':<32} {'wall events/s':>14} {'cpu events/s':>14}")
    for case in cases:
        print(f"  {case.label:<32} {case.wall:>14,.0f} {case.cpu:>14,.0f}")
    for mode, sizes in group_sizes.items():
        print(f"  {'group commit mean batch, ' + mode:<32} {statistics.median(sizes):>14.1f} appends/commit")

    def ratio(a: str, b: str) -> tuple[float, float]:
        return by[a].wall / by[b].wall, by[a].cpu / by[b].cpu

    batched_normal = f"batched x{BATCH}, NORMAL"
    ratios = {
        "batched NORMAL / raw pre-encoded": ratio(batched_normal, "raw executemany, pre-encoded"),
        "batched NORMAL / raw + json.dumps": ratio(batched_normal, "raw executemany + json.dumps"),
        "group commit / single, FULL": ratio("group commit 8 threads, FULL", "single append, FULL"),
        "group commit / single, NORMAL": ratio("group commit 8 threads, NORMAL", "single append, NORMAL"),
        "replay decode / raw scan, orjson": ratio("replay read+decode", "raw sqlite3 scan + orjson.loads"),
        "replay decode / raw scan, json": ratio("replay read+decode", "raw sqlite3 scan + json.loads"),
    }
    print(f"ratios {'':<27} {'wall':>14} {'cpu':>14}")
    for label, (wall, cpu) in ratios.items():
        print(f"  {label:<32} {wall:>14.2f} {cpu:>14.2f}")
    print("targets (wall clock)")
    checks = [
        ("batched NORMAL >= 50,000/s", by[f"batched x{BATCH}, NORMAL"].wall / 50_000),
        ("batched / raw pre-encoded >= 0.5", ratios["batched NORMAL / raw pre-encoded"][0] / 0.5),
        ("batched / raw + json.dumps >= 0.5", ratios["batched NORMAL / raw + json.dumps"][0] / 0.5),
        ("replay read+decode >= 200,000/s", by["replay read+decode"].wall / 200_000),
    ]
    for label, share in checks:
        print(f"  {label:<36} {'PASS' if share >= 1 else 'FAIL'} ({share:.2f} of target)")
    print(f"  replay into World (no target): {by['replay into World (fold)'].wall:,.0f}/s wall")
    raw_pre, raw_json = by["raw executemany, pre-encoded"].wall, by["raw executemany + json.dumps"].wall
    raw_scan = by["raw sqlite3 scan + orjson.loads"].wall
    batched_wall = by[batched_normal].wall
    emit("journal", [
        Figure("batched appends x100, WAL + NORMAL", batched_wall, "/s", raw_pre,
               "raw `executemany`, pre-encoded", "≥ 50,000/s and ≥ 0.5x the baseline", checks[0][1] >= 1
               and checks[1][1] >= 1),
        Figure("batched appends x100, against encoding in the loop", batched_wall, "/s", raw_json,
               "raw `executemany` + `json.dumps`", "≥ 0.5x the baseline", checks[2][1] >= 1),
        Figure("replay read + decode", by["replay read+decode"].wall, "/s", raw_scan,
               "raw sqlite3 scan + `orjson.loads`", "≥ 200,000/s", checks[3][1] >= 1),
        Figure("replay into every state", by["replay into World (fold)"].wall, "/s", raw_scan,
               "raw sqlite3 scan + `orjson.loads`"),
        Figure("batched appends x100, CPU time", by[batched_normal].cpu, "/s",
               by["raw executemany, pre-encoded"].cpu, "raw `executemany`, pre-encoded, CPU time"),
        Figure("replay read + decode, CPU time", by["replay read+decode"].cpu, "/s",
               by["raw sqlite3 scan + orjson.loads"].cpu, "raw sqlite3 scan + `orjson.loads`, CPU time"),
    ], load_before)
    return 0 if all(share >= 1 for _, share in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
