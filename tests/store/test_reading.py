"""Following the log (sync and asyncio), the fast decoder, and replay by time."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from events import base
from events import types as ev
from store import EventStore, open_store
from store.aio import AsyncEventReader
from store.codec import RowDecoder, encode_payload
from store.replay import replay
from tests.store.helpers import left, metrics, state


@pytest.fixture
def store(any_db_url: str) -> Iterator[EventStore]:
    opened = open_store(any_db_url)
    try:
        yield opened
    finally:
        opened.close()


def test_follow_sees_old_and_new_events_and_saves_its_checkpoint(store: EventStore) -> None:
    store.append("peer:p:a", [left(0), metrics("a")], 0)
    stop = threading.Event()
    seen: list[int] = []

    def consume() -> None:
        for record in store.follow(types=["PeerLeft"], poll_interval=0.02, stop=stop, checkpoint="test"):
            seen.append(record.global_position)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        for i in range(1, 6):
            store.append("peer:p:a", [left(i)], store.stream_position("peer:p:a"))
        deadline = time.monotonic() + 10
        while len(seen) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert seen == [1, 3, 4, 5, 6, 7]
    assert store.load_checkpoint("test") == 7
    # Restarting from the checkpoint yields only what came after it.
    store.append("peer:p:a", [left(9)], 7)
    again = threading.Event()
    resumed = []
    for record in store.follow(checkpoint="test", stop=again, poll_interval=0.01):
        resumed.append(record.global_position)
        again.set()
    assert resumed == [8]


def test_async_reader_reads_and_follows(store: EventStore, any_db_url: str) -> None:
    store.append("peer:p:a", [state("a", "connecting"), metrics("a")], 0)

    async def scenario() -> tuple[list[int], list[str], int, list[int]]:
        async with AsyncEventReader(any_db_url) as reader:
            everything = [r.global_position for r in await reader.read_all()]
            stream = [r.event_type for r in await reader.read_stream("peer:p:a")]
            head = await reader.last_global_position()
            stop = asyncio.Event()
            followed: list[int] = []

            async def writer() -> None:
                await asyncio.sleep(0.05)
                await asyncio.to_thread(store.append, "peer:p:a", [left(1), left(2)], 2)

            task = asyncio.create_task(writer())
            async for record in reader.follow(0, poll_interval=0.02, stop=stop):
                followed.append(record.global_position)
                if len(followed) == 4:
                    stop.set()
            await task
            return everything, stream, head, followed

    everything, stream, head, followed = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert everything == [1, 2]
    assert stream == ["ConnectionStateChanged", "MetricsSampled"]
    assert head == 2
    assert followed == [1, 2, 3, 4]


def test_fast_decoder_matches_the_reference_decoder_for_every_type() -> None:
    decoder = RowDecoder()
    for name, cls in base.registered_types().items():
        sample = {}
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                continue
            kind = str(field.type)
            sample[field.name] = (("a", "b") if "tuple" in kind else 1 if kind.startswith("int")
                                  else 1.5 if kind.startswith("float") else True if kind.startswith("bool")
                                  else "x")
        event = cls(**sample)
        _, version, text = base.encode(event)
        assert decoder.decode(name, version, text) == base.decode(name, version, text) == event, name
        assert decoder.decode(name, version, encode_payload(event)) == event, name
    # Older versions, unknown keys and missing defaults go through the same rules.
    v1 = '{"node_id": "n1", "nat_type": "symmetric", "mapping": "198.51.100.7:4000", "extra": 1}'
    assert decoder.decode("NatDetected", 1, v1) == base.decode("NatDetected", 1, v1)
    listy = '{"party_id":"p","peer_id":"q","local_candidates":["a"],"remote_candidates":[]}'
    decoded = decoder.decode("HolePunchAttempted", 1, listy)
    assert decoded.local_candidates == ("a",) and decoded == base.decode("HolePunchAttempted", 1, listy)
    hash(decoded)


def test_replay_at_a_time_is_a_prefix_of_the_log(store: EventStore) -> None:
    store.append("peer:p:a", [state("a", "connecting")], 0)
    time.sleep(0.02)
    middle = datetime.now(UTC)
    time.sleep(0.02)
    store.append("peer:p:a", [state("a", "connected", "connecting")], 1)
    assert replay(store, at=middle).connections["peer:p:a"].state == "connecting"
    assert replay(store, at=middle).position == 1
    assert replay(store).connections["peer:p:a"].state == "connected"
    assert replay(store, at=middle - timedelta(days=1)).connections == {}
    assert replay(store, at=datetime.now(UTC), position=1).position == 1


def test_recorded_at_never_goes_backwards(store: EventStore) -> None:
    for i in range(20):
        store.append("node:n", [ev.NodeStopped(node_id="n", reason=str(i))], i)
    times = [r.recorded_at for r in store.read_all()]
    assert times == sorted(times)
    assert all(moment.tzinfo is not None for moment in times)


def test_a_follower_never_skips_rows_while_several_writers_commit(store: EventStore, any_db_url: str) -> None:
    other = open_store(any_db_url)
    stop = threading.Event()
    followed: list[int] = []

    def follow() -> None:
        for record in store.follow(poll_interval=0.001, stop=stop):
            followed.append(record.global_position)

    def write(writer: EventStore, n: int) -> None:
        for i in range(40):
            writer.append(f"peer:p:{n}", [left(i)] * (1 + i % 3), writer.stream_position(f"peer:p:{n}"))

    follower = threading.Thread(target=follow)
    follower.start()
    writers = [threading.Thread(target=write, args=(store if n % 2 else other, n)) for n in range(4)]
    try:
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        total = store.last_global_position()
        deadline = time.monotonic() + 10
        while len(followed) < total and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        follower.join(10)
        other.close()
    assert followed == list(range(1, total + 1))
