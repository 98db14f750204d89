"""Retention prunes samples and probe records from the head of their streams, never a transition."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

import cli
from events import types as ev
from events.base import Event
from events.fold import ConnectionState, RelayState, World, apply_connection, apply_relay
from store import EventStore, RecordedEvent, open_store
from store.replay import replay
from store.retention import PRUNABLE_TYPES, low_water_marks, parse_keep, prune, transitions, upkeep
from tests.store.helpers import left, metrics, state
from tests.store.test_properties import SETTINGS, _builds, names, streamed_event

LATER = datetime.now(UTC) + timedelta(days=400)  # every row of the test is older than LATER - 30 days


@pytest.fixture
def store(any_db_url: str) -> Iterator[EventStore]:
    opened = open_store(any_db_url, metadata={"node_id": "n1"})
    try:
        yield opened
    finally:
        opened.close()


def probed(answered: int, rtt: float | None = 20.0) -> ev.RelayProbed:
    return ev.RelayProbed(relay="203.0.113.9:8668", rtt_ms=rtt if answered else None, probes=3,
                          answered=answered)


def test_prune_keeps_transitions_the_newest_row_and_positions(store: EventStore) -> None:
    store.append("metrics:n1:p:bob", [metrics("bob", n) for n in range(10)], 0)
    store.append("peer:n1:p:bob", [state("bob", "connecting"), metrics("bob"), state("bob", "connected",
                                                                                      "connecting"),
                                   metrics("bob"), metrics("bob")], 0)
    relay = "relay:n1:203.0.113.9:8668"
    store.append(relay, [probed(3), probed(3),
                         ev.RelayDegraded(relay="203.0.113.9:8668", reason="silent", rtt_ms=None),
                         probed(0), probed(3), probed(3), probed(3)], 0)
    store.append("relay-server:198.51.100.7:8668", [ev.RelayServerStarted(relay="198.51.100.7:8668"),
                                                    ev.RelayCountersSampled(
        relay="198.51.100.7:8668", window_s=10.0, forwarded_packets=5, forwarded_bytes=500,
        dropped_unauthenticated=0, dropped_rate_limited=0, dropped_malformed=0, active_sessions=1)], 0)
    head = store.last_global_position()
    assert prune(store).rows == 0  # everything is younger than 30 days
    report = prune(store, now=LATER)
    assert report.by_kind == {"metrics": 9, "peer": 2, "relay": 3}
    assert [r.event_type for r in store.read_stream("metrics:n1:p:bob")] == ["MetricsSampled"]
    assert [r.stream_position for r in store.read_stream("peer:n1:p:bob")] == [1, 3, 5]
    # Kept: the probe that named the relay (1), the degradation (3), the probe that cleared it (5),
    # and the newest row (7).
    assert [r.stream_position for r in store.read_stream(relay)] == [1, 3, 5, 7]
    assert [r.stream_position for r in store.read_stream("relay-server:198.51.100.7:8668")] == [1, 2]
    assert low_water_marks(store) == {"metrics:n1:p:bob": 9, "peer:n1:p:bob": 4, relay: 6}
    assert store.last_global_position() == head and store.stream_position(relay) == 7
    appended = store.append(relay, [probed(3)], 7)[0]
    assert (appended.stream_position, appended.global_position) == (8, head + 1)
    assert prune(store, now=LATER).by_kind == {"relay": 1}  # the old newest row, now superseded
    assert upkeep(store, now=LATER).pruned.rows == 0


def test_pruning_with_snapshots_and_the_views(store: EventStore, any_db_url: str) -> None:
    store.append("peer:n1:p:bob", [state("bob", "connecting"), metrics("bob", 10.0),
                                   state("bob", "connected", "connecting"), metrics("bob", 11.0)], 0)
    engine = create_engine(any_db_url)
    try:
        query = text("SELECT global_position, node_id, to_state FROM connection_history ORDER BY 1")
        with engine.connect() as connection:
            before = connection.execute(query).all()
        prune(store, now=LATER)
        with engine.connect() as connection:
            assert connection.execute(query).all() == before
            samples = connection.execute(text("SELECT latency_ms FROM peer_metrics")).all()
    finally:
        engine.dispose()
    assert [row[0] for row in samples] == [11.0]


def _transitions(world: World) -> tuple[object, ...]:
    return (world.parties, world.nodes, {key: transitions(value) for key, value in world.connections.items()},
            {key: transitions(value) for key, value in world.relays.items()})


sampled = st.one_of(
    streamed_event,
    st.tuples(names.map(lambda n: f"metrics:n1:p1:{n}"), _builds(ev.MetricsSampled)),
    st.tuples(st.just("relay:n1:203.0.113.9:8668"), _builds(ev.RelayProbed)),
    st.tuples(st.just("relay-server:203.0.113.9:8668"), _builds(ev.RelayCountersSampled)),
)


def _must_stay(stream: str, records: list[RecordedEvent]) -> set[int]:
    """The positions retention may never delete, judged from the stream as it was before pruning.

    Every row that is not a sample, the newest row, and in a stream with a state of its own
    the first row (it makes the state exist) and each sample that changed a transition.
    """
    kept = {r.stream_position for r in records if r.event_type not in PRUNABLE_TYPES}
    kept.add(records[-1].stream_position)
    if stream.startswith("metrics:"):
        return kept
    apply, state = ((apply_relay, RelayState()) if stream.startswith("relay") else
                    (apply_connection, ConnectionState()))
    kept.add(records[0].stream_position)
    for record in records:
        before = transitions(state)
        state = apply(state, record.event)
        if transitions(state) != before:
            kept.add(record.stream_position)
    return kept


_PEER_B = "peer:n1:p1:b"
_RELAY = "relay:n1:203.0.113.9:8668"


@SETTINGS
@given(items=st.lists(sampled, min_size=1, max_size=40))
# A peer stream that begins with a sample: that first row stays (it makes the connection exist in
# a replay), below the low-water mark of the later sample that goes.
@example(items=[(_PEER_B, metrics("b")), (_PEER_B, metrics("b")),
                (_PEER_B, ev.HolePunchFailed(party_id="p1", peer_id="b", reason="", elapsed_ms=0.0))])
# A relay's probe that clears its degradation stays below the mark; the silent probe before it goes.
@example(items=[(_RELAY, probed(3)), (_RELAY, ev.RelayDegraded(relay="203.0.113.9:8668", reason="silent",
                                                               rtt_ms=None)),
                (_RELAY, probed(0)), (_RELAY, probed(3)), (_RELAY, probed(3)), (_RELAY, probed(3))])
def test_pruning_never_changes_a_replayed_transition(store: EventStore,
                                                     items: list[tuple[str, Event]]) -> None:
    run = uuid.uuid4().hex[:8]
    base = World(position=store.last_global_position())
    for stream, event in items:
        stream = f"{stream}-{run}"
        store.append(stream, [event], store.stream_position(stream))
    last = store.last_global_position()
    before = [_transitions(replay(store, position=position, start=base))
              for position in range(base.position, last + 1)]
    positions = {stream: store.stream_position(stream) for stream in store.streams() if run in stream}
    must_stay = {stream: _must_stay(stream, store.read_stream(stream)) for stream in positions}
    prune(store, now=LATER)
    after = [_transitions(replay(store, position=position, start=base))
             for position in range(base.position, last + 1)]
    assert after == before
    marks = low_water_marks(store)
    for stream, newest in positions.items():
        assert store.stream_position(stream) == newest  # the newest row always stays
        kept = [r.stream_position for r in store.read_stream(stream)]
        above = [p for p in kept if p > marks.get(stream, 0)]
        assert above == list(range(marks.get(stream, 0) + 1, newest + 1))  # gapless above the mark
        assert must_stay[stream] <= set(kept)
        # At or below the mark, a sample is left only where it had to stay.
        assert [p for p in kept if p <= marks.get(stream, 0)] == \
            sorted(p for p in must_stay[stream] if p <= marks.get(stream, 0))


def test_parse_keep() -> None:
    assert parse_keep("30d") == timedelta(days=30) and parse_keep("12h") == timedelta(hours=12)
    assert parse_keep("90m") == timedelta(minutes=90) and parse_keep("7") == timedelta(days=7)
    for bad in ("soon", "-1d", "nan", ""):
        with pytest.raises(ValueError):
            parse_keep(bad)


def test_db_prune_and_stats(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(sqlite_url) as store:
        store.append("metrics:n1:p:bob", [metrics("bob", n) for n in range(5)], 0)
        store.append("party:n1:p", [left(0)], 0)
    assert cli.main(["db", "prune", "--keep", "forever", "--db", sqlite_url]) != 0
    err = capsys.readouterr().err
    assert "--keep: cannot read 'forever' as a duration" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["db", "prune", "--db", sqlite_url]) == 0
    assert "pruned 0 rows" in capsys.readouterr().out
    assert cli.main(["db", "prune", "--keep", "0s", "--db", sqlite_url]) == 0
    assert "pruned 4 rows recorded before" in capsys.readouterr().out
    assert cli.main(["db", "stats", "--db", sqlite_url, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [(k["kind"], k["rows"]) for k in stats["kinds"]] == [("metrics", 1), ("party", 1)]
    assert stats["pruned_rows"] == 4 and stats["pruned_streams"] == 1 and stats["database_bytes"] > 0
    assert all(k["bytes"] > 100 for k in stats["kinds"]) and stats["oldest"] is not None
    assert cli.main(["db", "stats", "--db", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "metrics" in out and "retention removed 4 rows from 1 streams" in out


def test_stats_on_both_databases(store: EventStore) -> None:
    from store.retention import log_stats

    store.append("metrics:n1:p:bob", [metrics("bob", n) for n in range(3)], 0)
    store.append("relay-server:198.51.100.7:8668", [ev.RelayServerStarted(relay="198.51.100.7:8668")], 0)
    prune(store, now=LATER)
    stats = log_stats(store)
    assert [(k.kind, k.rows) for k in stats.kinds] == [("metrics", 1), ("relay-server", 1)]
    assert all(k.bytes > 50 and k.oldest is not None for k in stats.kinds)
    assert (stats.pruned_rows, stats.pruned_streams) == (2, 1) and (stats.database_bytes or 0) > 0
