"""Group commit: concurrent appenders share one transaction, each keeps its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from store import ConcurrencyError, EventStore, PendingEvent, open_store
from tests.store.helpers import left


@pytest.fixture
def store(any_db_url: str) -> Iterator[EventStore]:
    opened = open_store(any_db_url)
    try:
        yield opened
    finally:
        opened.close()


@contextmanager
def busy_leader(store: EventStore) -> Iterator[None]:
    """Appenders started inside queue up as if a leader were committing; then one takes them all."""
    with store._turn:
        store._leading = True
    try:
        yield
    finally:
        store._hand_over()


def _queued(store: EventStore, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(store._queue) < count:
        assert time.monotonic() < deadline, "appenders never queued"
        time.sleep(0.001)


def test_waiting_appenders_commit_in_one_transaction_and_a_conflict_fails_alone(store: EventStore) -> None:
    store.append("peer:p:busy", [left()], 0)
    outcomes: dict[str, object] = {}
    jobs = [(f"peer:p:{n}", 0) for n in range(6)] + [("peer:p:busy", 0), ("peer:p:busy", 1)]

    def run(name: str, stream: str, expected: int) -> None:
        try:
            outcomes[name] = store.append(stream, [left(), left()], expected)
        except ConcurrencyError as error:
            outcomes[name] = error

    store.batches.clear()
    threads = [threading.Thread(target=run, args=(f"{stream}@{expected}", stream, expected))
               for stream, expected in jobs]
    with busy_leader(store):  # everyone queues before anyone commits
        for thread in threads:
            thread.start()
        _queued(store, len(jobs))
    for thread in threads:
        thread.join(10)
    assert store.batches == [len(jobs)]
    assert isinstance(outcomes["peer:p:busy@0"], ConcurrencyError)
    assert [r.stream_position for r in outcomes["peer:p:busy@1"]] == [2, 3]  # type: ignore[attr-defined]
    for n in range(6):
        assert [r.stream_position for r in outcomes[f"peer:p:{n}@0"]] == [1, 2]  # type: ignore[attr-defined]
    positions = [r.global_position for r in store.read_all()]
    assert positions == list(range(1, 2 + 14))


def test_two_appends_to_one_stream_in_one_batch_keep_their_order(store: EventStore) -> None:
    first, second = [PendingEvent(left(1))], [PendingEvent(left(2))]
    results: list[object] = [None, None]

    def run(index: int, items: list[PendingEvent], expected: int) -> None:
        try:
            results[index] = store.append("peer:p:q", items, expected)
        except ConcurrencyError as error:
            results[index] = error

    with busy_leader(store):
        one = threading.Thread(target=run, args=(0, first, 0))
        one.start()
        _queued(store, 1)
        two = threading.Thread(target=run, args=(1, second, 1))
        two.start()
        _queued(store, 2)
    one.join(10)
    two.join(10)
    assert [r.event.reason for r in store.read_stream("peer:p:q")] == ["r1", "r2"]


def test_identical_retry_in_the_same_batch_is_idempotent(store: EventStore) -> None:
    items = [PendingEvent(left(1)), PendingEvent(left(2))]
    results: list[object] = []

    def run() -> None:
        results.append(store.append("peer:p:q", items, 0))

    threads = [threading.Thread(target=run) for _ in range(2)]
    with busy_leader(store):
        for thread in threads:
            thread.start()
        _queued(store, 2)
    for thread in threads:
        thread.join(10)
    assert results[0] == results[1]
    assert store.last_global_position() == 2


def test_many_threads_lose_nothing(store: EventStore) -> None:
    per_thread, threads = 40, 8
    acked: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(per_thread):
            for record in store.append(f"peer:p:{n % 4}-{n}", [left(i)], i):
                with lock:
                    acked.append((record.stream_id, record.stream_position, record.global_position))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    stored = [(r.stream_id, r.stream_position, r.global_position) for r in store.read_all()]
    assert sorted(acked, key=lambda item: item[2]) == stored
    assert [g for _, _, g in stored] == list(range(1, per_thread * threads + 1))


def test_fsync_bound_appenders_do_share_commits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with open_store(f"sqlite:///{tmp_path / 'full.db'}", synchronous="FULL") as store:
        store.batches.clear()

        def work(n: int) -> None:
            for i in range(30):
                store.append(f"node:{n}", [left(i)], i)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert sum(store.batches) == 240
        assert len(store.batches) < 240  # at least some transactions carried several appends
