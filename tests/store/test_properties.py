"""Property tests: concurrent interleavings keep the log's order, and folding splits cleanly."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import types as ev
from events.base import Event
from events.fold import World, apply_world
from store import ConcurrencyError, EventStore, PendingEvent, open_store
from store.replay import replay

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def store(any_db_url: str) -> Iterator[EventStore]:
    opened = open_store(any_db_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def stores(store: EventStore, any_db_url: str) -> Iterator[list[EventStore]]:
    """Two stores on one database: two writer connections, as two processes would have."""
    other = open_store(any_db_url)
    try:
        yield [store, other]
    finally:
        other.close()


# ---------------------------------------------------------------- interleavings

operation = st.tuples(st.integers(0, 2),        # which of three shared streams
                      st.integers(1, 3),        # how many events
                      st.booleans())            # use a stale expected position on purpose
schedules = st.lists(st.lists(operation, min_size=1, max_size=12), min_size=2, max_size=5)


@SETTINGS
@given(schedule=schedules)
def test_random_interleavings_keep_streams_gapless_and_lose_nothing(stores: list[EventStore],
                                                                  schedule: list[list[tuple[int, int, bool]]],
                                                                  ) -> None:
    store = stores[0]
    run = uuid.uuid4().hex[:8]
    streams = [f"peer:{run}:{n}" for n in range(3)]
    start = store.last_global_position()
    acked: list[tuple[int, str, int, str]] = []
    conflicts = 0
    lock = threading.Lock()
    barrier = threading.Barrier(len(schedule))

    def appender(writer: EventStore, operations: list[tuple[int, int, bool]]) -> None:
        nonlocal conflicts
        barrier.wait()
        for stream_index, count, stale in operations:
            stream = streams[stream_index]
            expected = writer.stream_position(stream) - (1 if stale else 0)
            items = [PendingEvent(ev.PeerLeft(party_id=run, peer_id=str(stream_index), reason=str(i)))
                     for i in range(count)]
            try:
                records = writer.append(stream, items, max(expected, 0))
            except ConcurrencyError:
                with lock:
                    conflicts += 1
                continue
            assert [r.event_id for r in records] == [item.event_id for item in items]
            with lock:
                acked.extend((r.global_position, r.stream_id, r.stream_position, r.event_id) for r in records)

    threads = [threading.Thread(target=appender, args=(stores[n % 2], operations))
               for n, operations in enumerate(schedule)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stored = [(r.global_position, r.stream_id, r.stream_position, r.event_id)
              for r in store.read_all(start, stream=f"peer:{run}:")]
    # Nothing acknowledged is lost or changed, and nothing unacknowledged appears.
    assert sorted(acked) == stored
    # One global order, strictly increasing, with no holes (no other writer ran meanwhile).
    assert [g for g, *_ in stored] == list(range(start + 1, start + 1 + len(stored)))
    for stream in streams:
        positions = [p for _, s, p, _ in stored if s == stream]
        assert positions == list(range(1, len(positions) + 1))   # gapless, in global order
        assert store.stream_position(stream) == len(positions)


# ---------------------------------------------------------------- folds

names = st.sampled_from(["a", "b", "c"])
texts = st.text(alphabet="abcxyz.:-", max_size=6)


def _field_strategy(field: dataclasses.Field) -> st.SearchStrategy:  # type: ignore[type-arg]
    kind = str(field.type)
    if field.name in ("party_id",):
        base: st.SearchStrategy = st.just("p1")
    elif field.name in ("peer_id", "node_id"):
        base = names
    elif field.name in ("to_state", "from_state"):
        base = st.sampled_from(ev.CONNECTION_STATES)
    elif field.name in ("path", "to_path", "from_path"):
        base = st.sampled_from(ev.PATHS)
    elif kind.startswith("tuple"):
        base = st.lists(texts, max_size=3).map(tuple)
    elif kind.startswith("bool"):
        base = st.booleans()
    elif kind.startswith("int"):
        base = st.integers(0, 10_000)
    elif kind.startswith("float"):
        base = st.floats(0, 1000, allow_nan=False, allow_infinity=False)
    else:
        base = texts
    return st.none() | base if "None" in kind else base


def _builds(cls: type[Event]) -> st.SearchStrategy:
    return st.builds(cls, **{field.name: _field_strategy(field) for field in dataclasses.fields(cls)})


PARTY = [ev.PartyCreated, ev.PartyJoined, ev.PeerJoined, ev.VirtualIpAllocated, ev.VirtualIpReleased,
         ev.PeerLeft, ev.PartyLeft]
PEER = [ev.ConnectionAttemptStarted, ev.PathChosen, ev.HolePunchAttempted, ev.HolePunchSucceeded,
        ev.HolePunchFailed, ev.WireGuardPeerConfigured, ev.WireGuardPeerRemoved, ev.ConnectionStateChanged,
        ev.EndpointChanged, ev.ReconnectAttempted, ev.PathSwitched, ev.DirectPathRetried, ev.MetricsSampled]
RELAY = [ev.RelayProbed, ev.RelayDegraded, ev.RelaySessionAllocated, ev.RelaySessionExpired,
         ev.RelayCountersSampled, ev.RelayServerStarted, ev.RelayServerStopped]
NODE = [ev.NodeStarted, ev.NodeStopped, ev.NatDetected, ev.NatDetectionFailed, ev.RelaySelected,
        ev.MessageRejected]

streamed_event = st.one_of(
    st.tuples(st.just("party:n1:p1"), st.one_of(*map(_builds, PARTY))),
    st.tuples(names.map(lambda n: f"peer:n1:p1:{n}"), st.one_of(*map(_builds, PEER))),
    st.tuples(st.just("relay:n1:203.0.113.9:8668"), st.one_of(*map(_builds, RELAY))),
    st.tuples(names.map(lambda n: f"node:{n}"), st.one_of(*map(_builds, NODE))),
)


def _fold(items: list[tuple[str, Event]], world: World | None = None) -> World:
    world = world or World()
    for stream, event in items:
        apply_world(world, stream, event)
    return world


@settings(max_examples=200, deadline=None)
@given(st.lists(streamed_event, max_size=40), st.data())
def test_folding_the_whole_log_equals_folding_any_split(items: list[tuple[str, Event]],
                                                        data: st.DataObject) -> None:
    split = data.draw(st.integers(0, len(items)))
    whole = _fold(items)
    assert _fold(items[split:], _fold(items[:split])) == whole
    third = data.draw(st.integers(split, len(items)))
    assert _fold(items[third:], _fold(items[split:third], _fold(items[:split]))) == whole


@SETTINGS
@given(items=st.lists(streamed_event, min_size=1, max_size=30), data=st.data())
def test_replay_from_the_store_equals_the_live_fold_at_every_split(store: EventStore,
                                                                   items: list[tuple[str, Event]],
                                                                   data: st.DataObject) -> None:
    run = uuid.uuid4().hex[:8]
    renamed = [(f"{stream}-{run}", event) for stream, event in items]
    base = World(position=store.last_global_position())
    for stream, event in renamed:
        store.append(stream, [event], store.stream_position(stream))
    last = store.last_global_position()
    whole = replay(store, start=base)
    live = _fold(renamed)
    assert (whole.parties, whole.connections, whole.relays, whole.nodes) == \
        (live.parties, live.connections, live.relays, live.nodes)
    assert whole.position == last
    assert last == base.position + len(renamed)
    split = base.position + data.draw(st.integers(0, len(renamed)))  # drawn independently of the store
    first = replay(store, position=split, start=base)
    assert first.position == split
    assert replay(store, start=first) == whole
    assert first == replay(store, position=split, start=base)  # continuing did not modify `first`
