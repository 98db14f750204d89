"""Journal benchmark: the event store against raw sqlite3, in one run.

    .venv/bin/python bench/journal.py [--repeat 5] [--events 50000] [--replay-events 200000]

Prints the median of each figure over ``--repeat`` runs (each on a fresh
database in a temporary directory) and the ratios against the targets:
batched appends >= 50,000 events/s (WAL, NORMAL), >= 0.5 of raw sqlite3
``executemany`` into the same table, and replay >= 200,000 events/s.
Every event is a ``MetricsSampled`` of about 200 bytes of JSON.
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
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from events import types as ev
from store import migrate, open_store
from store.replay import iter_events, replay

BATCH = 100


def sample(i: int) -> ev.MetricsSampled:
    return ev.MetricsSampled(party_id="5f2c9a1e", peer_id=f"peer-{i % 16:02d}", window_s=10.0, probes=10,
                             latency_ms=20.0 + (i % 7), jitter_ms=1.25, loss=0.0, rx_bytes=1_000_000 + i,
                             tx_bytes=2_000_000 + i, quality=97.5)


def url_in(directory: Path) -> str:
    return f"sqlite:///{directory / f'{uuid.uuid4().hex}.db'}"


def single(directory: Path, count: int, synchronous: str) -> float:
    with open_store(url_in(directory), synchronous=synchronous) as store:  # type: ignore[arg-type]
        events = [sample(i) for i in range(count)]
        start = time.perf_counter()
        for i, event in enumerate(events):
            store.append("peer:bench:a", [event], i)
        return count / (time.perf_counter() - start)


def batched(directory: Path, count: int, synchronous: str) -> float:
    with open_store(url_in(directory), synchronous=synchronous) as store:  # type: ignore[arg-type]
        events = [sample(i) for i in range(count)]
        start = time.perf_counter()
        for offset in range(0, count, BATCH):
            store.append("peer:bench:a", events[offset:offset + BATCH], offset)
        return count / (time.perf_counter() - start)


def group_commit(directory: Path, count: int, synchronous: str, threads: int = 8) -> tuple[float, float]:
    """``threads`` appenders, one event per call, each on its own stream."""
    with open_store(url_in(directory), synchronous=synchronous) as store:  # type: ignore[arg-type]
        per_thread = count // threads
        store.batches.clear()

        def work(n: int) -> None:
            for i in range(per_thread):
                store.append(f"peer:bench:{n}", [sample(i)], i)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rate = per_thread * threads / (time.perf_counter() - start)
        return rate, statistics.mean(store.batches)


def raw_baseline(directory: Path, count: int, encode: bool) -> float:
    """sqlite3 executemany into the same (alembic-made) table, WAL + NORMAL, 100 rows per commit.

    With ``encode`` the timed loop also turns each event into JSON (``json.dumps`` of
    its fields), the least any writer of these events must do; without it the rows
    are prepared before the clock starts.
    """
    url = url_in(directory)
    migrate(url)
    path = url.removeprefix("sqlite:///")
    connection = sqlite3.connect(path, isolation_level=None)
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
    start = time.perf_counter()
    for offset in range(0, count, BATCH):
        chunk = rows(offset, offset + BATCH) if prepared is None else prepared[offset:offset + BATCH]
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(sql, chunk)
        connection.execute("COMMIT")
    rate = count / (time.perf_counter() - start)
    connection.close()
    return rate


def filled(directory: Path, count: int) -> str:
    url = url_in(directory)
    with open_store(url) as store:
        for offset in range(0, count, 1000):
            chunk = [sample(i) for i in range(offset, min(count, offset + 1000))]
            store.append(f"peer:bench:{offset // 1000 % 16}", chunk, store.stream_position(
                f"peer:bench:{offset // 1000 % 16}"))
    return url


def replay_decode(url: str, count: int) -> float:
    """Replay's read path: raw rows from the cursor, decoded into events."""
    with open_store(url, readonly=True) as store:
        start = time.perf_counter()
        seen = sum(1 for _ in iter_events(store))
        assert seen == count, seen
        return count / (time.perf_counter() - start)


def read_records(url: str, count: int) -> float:
    """``read_all``: paged Core queries into RecordedEvents with metadata (the CLI/API path)."""
    with open_store(url, readonly=True) as store:
        start = time.perf_counter()
        seen = sum(1 for _ in store.read_all())
        assert seen == count, seen
        return count / (time.perf_counter() - start)


def replay_world(url: str, count: int) -> float:
    with open_store(url, readonly=True) as store:
        start = time.perf_counter()
        world = replay(store)
        assert world.position == count
        return count / (time.perf_counter() - start)


def raw_json_scan(url: str, count: int) -> float:
    path = url.removeprefix("sqlite:///")
    connection = sqlite3.connect(path)
    start = time.perf_counter()
    n = 0
    for row in connection.execute("SELECT global_position, stream_id, event_type, event_version, payload"
                                  " FROM events ORDER BY global_position"):
        json.loads(row[4])
        n += 1
    assert n == count
    connection.close()
    return count / (time.perf_counter() - start)


def median(runs: int, function: Callable[[], float]) -> float:
    return statistics.median(function() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--single", type=int, default=3_000)
    parser.add_argument("--replay-events", type=int, default=200_000)
    args = parser.parse_args()
    runs = args.repeat
    results: dict[str, float] = {}
    batches: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lanrage-bench-") as name:
        directory = Path(name)
        for mode in ("NORMAL", "FULL"):
            results[f"single append, {mode}"] = median(runs, lambda m=mode: single(directory, args.single, m))
        for mode in ("NORMAL", "FULL"):
            results[f"batched x{BATCH}, {mode}"] = median(
                runs, lambda m=mode: batched(directory, args.events, m))
        for mode in ("NORMAL", "FULL"):
            group = [group_commit(directory, args.single * 2, mode) for _ in range(runs)]
            results[f"group commit 8 threads, {mode}"] = statistics.median(rate for rate, _ in group)
            batches[mode] = statistics.median(size for _, size in group)
        for label, encode in (("raw executemany, pre-encoded", False),
                              ("raw executemany + json.dumps", True)):
            results[label] = median(runs, lambda e=encode: raw_baseline(directory, args.events, e))
        url = filled(directory, args.replay_events)
        results["replay read+decode"] = median(runs, lambda: replay_decode(url, args.replay_events))
        results["replay into World (fold)"] = median(runs, lambda: replay_world(url, args.replay_events))
        results["read_all RecordedEvents"] = median(runs, lambda: read_records(url, args.replay_events))
        results["raw sqlite3 scan + json.loads"] = median(
            runs, lambda: raw_json_scan(url, args.replay_events))

    print(f"journal benchmark: median of {runs} runs; {args.events} events batched, {args.single} single, "
          f"{args.replay_events} replayed; MetricsSampled (~170 B JSON); SQLite WAL")
    print(f"  load average while running: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
          f" on {os.cpu_count()} CPUs (other work on the machine lowers every figure)")
    for label, rate in results.items():
        print(f"  {label:<34} {rate:>11,.0f} events/s")
    for mode, size in batches.items():
        print(f"  {'group commit mean batch, ' + mode:<34} {size:>11.1f} appends/transaction")
    batched_normal = results[f"batched x{BATCH}, NORMAL"]
    raw = results["raw executemany, pre-encoded"]
    raw_encoding = results["raw executemany + json.dumps"]
    print("ratios")
    ratios = {
        "batched NORMAL / raw pre-encoded": batched_normal / raw,
        "batched NORMAL / raw + json.dumps": batched_normal / raw_encoding,
        "group commit / single, FULL": results["group commit 8 threads, FULL"]
        / results["single append, FULL"],
        "group commit / single, NORMAL": results["group commit 8 threads, NORMAL"]
        / results["single append, NORMAL"],
        "replay decode / raw scan": results["replay read+decode"] / results["raw sqlite3 scan + json.loads"],
    }
    for label, ratio in ratios.items():
        print(f"  {label:<34} {ratio:>11.2f}")
    print("targets")
    checks = [
        ("batched NORMAL >= 50,000/s", batched_normal / 50_000),
        ("batched / raw pre-encoded >= 0.5", ratios["batched NORMAL / raw pre-encoded"] / 0.5),
        ("batched / raw + json.dumps >= 0.5", ratios["batched NORMAL / raw + json.dumps"] / 0.5),
        ("replay read+decode >= 200,000/s", results["replay read+decode"] / 200_000),
    ]
    for label, ratio in checks:
        print(f"  {label:<36} {'PASS' if ratio >= 1 else 'FAIL'} ({ratio:.2f} of target)")


if __name__ == "__main__":
    main()
