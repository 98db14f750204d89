"""The Recorder contract on SQLite and PostgreSQL (same code, same tests)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from store import ConcurrencyError, EventStore, PendingEvent, StoreError, open_store
from store.base import InMemoryRecorder
from tests.store.helpers import left, metrics, state


@pytest.fixture
def store(any_db_url: str) -> Iterator[EventStore]:
    opened = open_store(any_db_url, metadata={"node_id": "node-1"})
    try:
        yield opened
    finally:
        opened.close()


def test_append_and_read_back(store: EventStore) -> None:
    recorded = store.append("peer:p:q", [left(1), left(2)], 0)
    assert [r.stream_position for r in recorded] == [1, 2]
    assert [r.global_position for r in recorded] == [1, 2]
    assert store.read_stream("peer:p:q") == recorded
    assert list(store.read_all()) == recorded
    assert store.stream_position("peer:p:q") == 2
    assert store.last_global_position() == 2
    assert recorded[0].metadata["node_id"] == "node-1"
    assert recorded[0].recorded_at.tzinfo is not None


def test_metadata_is_stored_with_event_id(store: EventStore) -> None:
    item = PendingEvent(left(), metadata={"actor": "PeerActor", "causation_id": "c1", "correlation_id": "k1"})
    store.append("peer:p:q", [item], 0)
    (record,) = store.read_stream("peer:p:q")
    assert record.metadata == {"node_id": "node-1", "actor": "PeerActor", "causation_id": "c1",
                               "correlation_id": "k1", "event_id": item.event_id}


def test_wrong_expected_position_is_a_conflict_and_writes_nothing(store: EventStore) -> None:
    store.append("peer:p:q", [left(1)], 0)
    with pytest.raises(ConcurrencyError, match="at position 1, but the append expected 0"):
        store.append("peer:p:q", [left(2)], 0)
    with pytest.raises(ConcurrencyError, match="expected 5"):
        store.append("peer:p:q", [left(2)], 5)
    assert store.stream_position("peer:p:q") == 1
    assert store.last_global_position() == 1


def test_reappending_the_same_events_is_idempotent(store: EventStore) -> None:
    items = [PendingEvent(left(1)), PendingEvent(left(2))]
    first = store.append("peer:p:q", items, 0)
    store.append("peer:p:q", [left(3)], 2)
    assert store.append("peer:p:q", items, 0) == first
    assert store.append("peer:p:q", items[1:], 1) == first[1:]
    assert store.last_global_position() == 3
    with pytest.raises(ConcurrencyError):
        store.append("peer:p:q", [PendingEvent(left(1)), items[1]], 0)


def test_matches_the_in_memory_recorder(store: EventStore) -> None:
    memory = InMemoryRecorder()
    script = [("a", 0, 2), ("b", 0, 1), ("a", 2, 1), ("a", 1, 1), ("b", 1, 3), ("c", 3, 1)]
    for stream, expected, count in script:
        items = [PendingEvent(left(i)) for i in range(count)]
        outcomes = []
        for recorder in (memory, store):
            try:
                outcomes.append([(r.global_position, r.stream_position, r.event_id)
                                 for r in recorder.append(stream, items, expected)])
            except ConcurrencyError as error:
                outcomes.append(str(error))
        assert outcomes[0] == outcomes[1]
    assert [(r.global_position, r.stream_id, r.event) for r in memory.read_all()] == \
        [(r.global_position, r.stream_id, r.event) for r in store.read_all()]


def test_empty_append(store: EventStore) -> None:
    assert store.append("peer:p:q", [], 0) == []
    with pytest.raises(ConcurrencyError):
        store.append("peer:p:q", [], 3)


def test_read_all_paging_limit_and_filters(store: EventStore) -> None:
    store.page_size = 3
    for i in range(5):
        store.append(f"peer:p:{i}", [state(str(i), "connecting"), metrics(str(i))], 0)
    store.append("party:p", [left()], 0)
    assert [r.global_position for r in store.read_all()] == list(range(1, 12))
    assert [r.global_position for r in store.read_all(4, limit=5)] == [5, 6, 7, 8, 9]
    assert [r.stream_id for r in store.read_all(stream="peer:p:3")] == ["peer:p:3"] * 2
    assert len(list(store.read_all(stream="peer:"))) == 10
    assert [r.event_type for r in store.read_all(types=["MetricsSampled"], limit=2)] == ["MetricsSampled"] * 2
    assert len(list(store.read_all(types=["PeerLeft", "MetricsSampled"]))) == 6
    now = datetime.now(UTC)
    assert len(list(store.read_all(since=now - timedelta(minutes=1), until=now + timedelta(minutes=1)))) == 11
    assert list(store.read_all(since=now + timedelta(minutes=1))) == []
    assert [r.global_position for r in store.read_all(upto=2)] == [1, 2]


def test_like_wildcards_in_stream_filter_are_literal(store: EventStore) -> None:
    store.append("peer:p_1", [left()], 0)
    store.append("peer:pX1", [left()], 0)
    assert [r.stream_id for r in store.read_all(stream="peer:p_")] == ["peer:p_1"]


def test_checkpoints(store: EventStore) -> None:
    assert store.load_checkpoint("projection") == 0
    store.save_checkpoint("projection", 7)
    store.save_checkpoint("projection", 9)
    assert store.load_checkpoint("projection") == 9


def test_reopening_keeps_everything(any_db_url: str) -> None:
    with open_store(any_db_url) as first:
        first.append("node:n", [left()], 0)
    with open_store(any_db_url) as second:
        assert second.stream_position("node:n") == 1
        assert second.append("node:n", [left()], 1)[0].global_position == 2


def test_two_writers_on_one_database_see_each_others_positions(any_db_url: str) -> None:
    with open_store(any_db_url) as first, open_store(any_db_url) as second:
        first.append("peer:p:q", [left(1)], 0)
        second.append("peer:p:q", [left(2)], 1)
        with pytest.raises(ConcurrencyError, match="at position 2, but the append expected 1"):
            first.append("peer:p:q", [left(3)], 1)
        assert first.append("peer:p:q", [left(3)], 2)[0].global_position == 3
        assert [r.event.reason for r in second.read_stream("peer:p:q")] == ["r1", "r2", "r3"]


def test_an_event_that_cannot_be_encoded_fails_alone(store: EventStore) -> None:
    bad = metrics("q", float("nan"))
    with pytest.raises(StoreError, match="cannot encode MetricsSampled for stream 'peer:p:q': Out of range"):
        store.append("peer:p:q", [left(1), bad], 0)
    assert store.stream_position("peer:p:q") == 0
    assert store.append("peer:p:q", [left(1)], 0)[0].stream_position == 1


def test_a_forked_child_uses_its_own_connections(sqlite_url: str) -> None:
    import os

    with open_store(sqlite_url) as store:
        store.append("node:parent", [left(1)], 0)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                store.append("node:child", [left(2)], 0)
                code = 0 if store.stream_position("node:parent") == 1 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.append("node:parent", [left(3)], 1)[0].global_position == 3
        assert [r.stream_id for r in store.read_all()] == ["node:parent", "node:child", "node:parent"]


@pytest.fixture(params=["sql", "memory"])
def recorder(request: pytest.FixtureRequest, any_db_url: str) -> Iterator[EventStore | InMemoryRecorder]:
    if request.param == "memory":
        yield InMemoryRecorder()
        return
    opened = open_store(any_db_url, metadata={"node_id": "node-1"})
    try:
        yield opened
    finally:
        opened.close()


def test_append_many_stores_every_stream_in_one_go(recorder: EventStore | InMemoryRecorder) -> None:
    recorder.append("peer:n:p:a", [left(0)], 0)
    written = recorder.append_many([("peer:n:p:a", [left(1), left(2)], 1), ("party:n:p", [left(3)], 0),
                                    ("peer:n:p:b", [], 0)])
    assert [[(r.stream_id, r.stream_position, r.global_position) for r in part] for part in written] == [
        [("peer:n:p:a", 2, 2), ("peer:n:p:a", 3, 3)], [("party:n:p", 1, 4)], []]
    assert [r.event for r in recorder.read_stream("peer:n:p:a")] == [left(0), left(1), left(2)]
    assert list(recorder.read_all()) == recorder.read_stream("peer:n:p:a")[:1] + written[0] + written[1]
    assert recorder.append_many([]) == []


def test_append_many_one_conflict_stores_nothing_and_names_its_stream(
        recorder: EventStore | InMemoryRecorder) -> None:
    recorder.append("party:n:p", [left(0)], 0)
    with pytest.raises(ConcurrencyError, match="'party:n:p' is at position 1, but the append expected 0"):
        recorder.append_many([("peer:n:p:a", [left(1)], 0), ("party:n:p", [left(2)], 0)])
    assert recorder.stream_position("peer:n:p:a") == 0
    assert recorder.last_global_position() == 1
    # The same stream twice in one call: the second write expects where the first one ends.
    written = recorder.append_many([("peer:n:p:a", [left(1)], 0), ("peer:n:p:a", [left(2)], 1)])
    assert [r.stream_position for part in written for r in part] == [1, 2]
    with pytest.raises(ConcurrencyError, match="'peer:n:p:a'"):
        recorder.append_many([("peer:n:p:a", [left(3)], 2), ("peer:n:p:a", [left(4)], 2)])
    assert recorder.stream_position("peer:n:p:a") == 2


def test_append_many_is_idempotent_on_the_same_event_ids(recorder: EventStore | InMemoryRecorder) -> None:
    writes = [("peer:n:p:a", [PendingEvent(left(1)), PendingEvent(left(2))], 0),
              ("party:n:p", [PendingEvent(left(3))], 0)]
    first = recorder.append_many(writes)
    recorder.append("party:n:p", [left(4)], 1)
    assert recorder.append_many(writes) == first
    assert recorder.last_global_position() == 4
    with pytest.raises(ConcurrencyError, match="'peer:n:p:a'"):
        recorder.append_many([("peer:n:p:a", [PendingEvent(left(1))], 0)])


def test_append_many_conflict_in_a_group_commit_fails_only_its_own_request(any_db_url: str) -> None:
    import threading

    opened = open_store(any_db_url)
    try:
        opened.append("party:n:p", [left(0)], 0)
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def write(index: int) -> None:
            barrier.wait()
            try:
                if index == 0:
                    opened.append_many([(f"peer:n:p:{index}", [left(index)], 0), ("party:n:p", [left(9)], 0)])
                else:
                    opened.append_many([(f"peer:n:p:{index}", [left(index)], 0),
                                        (f"relay:n:192.0.2.{index}:3478", [left(index)], 0)])
            except ConcurrencyError as error:
                errors.append(error)

        threads = [threading.Thread(target=write, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert [error.stream_id for error in errors] == ["party:n:p"]  # type: ignore[attr-defined]
        assert opened.stream_position("peer:n:p:0") == 0
        assert opened.last_global_position() == 1 + 7 * 2
        positions = [r.global_position for r in opened.read_all()]
        assert positions == list(range(1, 16))
    finally:
        opened.close()
