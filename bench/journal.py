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

from events import types as ev  # noqa: E402
from store import migrate, open_store  # noqa: E402
from store.codec import encode_metadata, encode_payload  # noqa: E402
from store.replay import replay  # noqa: E402

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


def group_commit(directory: Path, count: int, threads: int = 8) -> tuple[float, float]:
    """``threads`` appenders, one event per call, each on its own stream."""
    with open_store(url_in(directory)) as store:
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


def raw_baseline(directory: Path, count: int) -> float:
    """sqlite3 executemany of pre-encoded rows into the same (alembic-made) table, 100 per commit."""
    url = url_in(directory)
    migrate(url)
    path = url.removeprefix("sqlite:///")
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    rows = [(i + 1, "peer:bench:a", i + 1, "MetricsSampled", 1, now, encode_payload(sample(i)),
             encode_metadata({"event_id": uuid.uuid4().hex})) for i in range(count)]
    start = time.perf_counter()
    for offset in range(0, count, BATCH):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO events (global_position, stream_id, stream_position, event_type, event_version,"
            " recorded_at, payload, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows[offset:offset + BATCH])
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


def read_decode(url: str, count: int) -> float:
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
    with tempfile.TemporaryDirectory(prefix="lanrage-bench-") as name:
        directory = Path(name)
        runs = args.repeat
        results: dict[str, float] = {}
        results["single NORMAL"] = median(runs, lambda: single(directory, args.single, "NORMAL"))
        results["single FULL"] = median(runs, lambda: single(directory, args.single, "FULL"))
        results["batched NORMAL"] = median(runs, lambda: batched(directory, args.events, "NORMAL"))
        results["batched FULL"] = median(runs, lambda: batched(directory, args.events, "FULL"))
        group = [group_commit(directory, args.single * 4) for _ in range(runs)]
        results["group commit 8 threads"] = statistics.median(rate for rate, _ in group)
        mean_batch = statistics.median(size for _, size in group)
        results["raw sqlite3 executemany"] = median(runs, lambda: raw_baseline(directory, args.events))
        url = filled(directory, args.replay_events)
        results["replay read+decode"] = median(runs, lambda: read_decode(url, args.replay_events))
        results["replay into World"] = median(runs, lambda: replay_world(url, args.replay_events))
        results["raw sqlite3 scan+json.loads"] = median(runs, lambda: raw_json_scan(url, args.replay_events))

    print(f"journal benchmark: median of {runs} runs, MetricsSampled payloads, WAL")
    for name, rate in results.items():
        print(f"  {name:<30} {rate:>12,.0f} events/s")
    print(f"  {'mean group-commit batch':<30} {mean_batch:>12.1f} appends/transaction")
    raw = results["raw sqlite3 executemany"]
    checks = [
        ("batched NORMAL >= 50,000/s", results["batched NORMAL"] / 50_000),
        ("batched NORMAL / raw >= 0.5", results["batched NORMAL"] / raw / 0.5),
        ("replay read+decode >= 200,000/s", results["replay read+decode"] / 200_000),
    ]
    print("ratios")
    print(f"  {'batched NORMAL / raw':<30} {results['batched NORMAL'] / raw:>12.2f}")
    print(f"  {'batched FULL / raw':<30} {results['batched FULL'] / raw:>12.2f}")
    print(f"  {'group commit / single NORMAL':<30} "
          f"{results['group commit 8 threads'] / results['single NORMAL']:>12.2f}")
    print(f"  {'replay decode / raw scan':<30} "
          f"{results['replay read+decode'] / results['raw sqlite3 scan+json.loads']:>12.2f}")
    print("targets")
    for label, ratio in checks:
        print(f"  {label:<34} {'PASS' if ratio >= 1 else 'FAIL'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
