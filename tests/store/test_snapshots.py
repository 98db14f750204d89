"""Snapshots are a cache: folding from any snapshot plus the events after it equals the whole fold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cli
from actors.journal import StreamWriter
from events.base import Event
from events.fold import (
    ConnectionState,
    NodeState,
    PartyState,
    World,
    apply_connection,
    apply_node,
    apply_party,
    apply_world,
)
from events.state_codec import StateDecodeError, decode_state, encode_state, fold_version
from store import EventStore, open_store
from store.base import InMemoryRecorder, Snapshot
from store.snapshots import load_state, refresh_snapshots, replay_stream, save_state
from tests.store.helpers import left
from tests.store.test_properties import NODE, PARTY, PEER, SETTINGS, _builds, streamed_event

FOLDS = {"party": (apply_party, PartyState(), PARTY), "peer": (apply_connection, ConnectionState(), PEER),
         "node": (apply_node, NodeState(), NODE)}
STREAMS = {"party": "party:n1:p1", "peer": "peer:n1:p1:a", "node": "node:n1"}


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def recorder(request: pytest.FixtureRequest) -> Iterator[EventStore | InMemoryRecorder]:
    if request.param == "memory":
        yield InMemoryRecorder()
        return
    opened = open_store(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    try:
        yield opened
    finally:
        opened.close()


def _fold(apply: Any, state: Any, events: list[Event]) -> Any:
    for event in events:
        state = apply(state, event)
    return state


kinds = st.sampled_from(sorted(FOLDS))


@SETTINGS
@given(kind=kinds, data=st.data())
def test_folding_from_any_snapshot_equals_folding_the_whole_stream(
        recorder: EventStore | InMemoryRecorder, kind: str, data: st.DataObject) -> None:
    apply, initial, types = FOLDS[kind]
    events = data.draw(st.lists(st.one_of(*map(_builds, types)), min_size=1, max_size=30))
    stream = f"{STREAMS[kind]}-{uuid.uuid4().hex[:8]}"
    recorder.append(stream, events, 0)
    split = data.draw(st.integers(1, len(events)))
    assert save_state(recorder, stream, apply, initial, _fold(apply, initial, events[:split]), split)
    assert load_state(recorder, stream, apply, initial)[1] == split
    whole = _fold(apply, initial, events)
    assert replay_stream(recorder, stream, apply, initial) == (whole, len(events))
    writer = StreamWriter(recorder, stream, "inc", {})
    assert writer.replay(apply, initial) == whole and writer.position == len(events)


@SETTINGS
@given(items=st.lists(streamed_event, max_size=40))
def test_the_state_codec_round_trips_every_folded_state(items: list[tuple[str, Event]]) -> None:
    world = World()
    for stream, event in items:
        apply_world(world, stream, event)
        for state in (*world.parties.values(), *world.connections.values(), *world.relays.values(),
                      *world.nodes.values()):
            assert decode_state(type(state), encode_state(state)) == state
    assert decode_state(World, encode_state(world)) == world


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"party_id": 5}', '{"no_such_field": 1}', '{"members": [["a"]]}',
    '{"members": [["a", {"peer_id": "a", "name": "n", "public_key": "k", "is_local": "yes"}]]}',
    "[" * 5000 + "]" * 5000,
])
def test_a_state_that_does_not_fit_is_refused(text: str) -> None:
    with pytest.raises(StateDecodeError):
        decode_state(PartyState, text)


def test_stale_unreadable_or_foreign_snapshots_are_ignored(recorder: EventStore | InMemoryRecorder) -> None:
    stream = "party:n1:p1"
    events = [left(n) for n in range(3)]
    recorder.append(stream, events, 0)
    whole = _fold(apply_party, PartyState(), events)
    version = fold_version(apply_party, PartyState())
    assert version is not None
    lying = encode_state(PartyState(name="a lie"))
    for snapshot in (Snapshot(stream, 2, "apply_party:old-code:0", lying),  # other fold code
                     Snapshot(stream, 2, version, "{broken"),  # unreadable
                     Snapshot(stream, 9, version, lying),  # beyond the stream: another log's
                     Snapshot(stream, 2, fold_version(apply_party, PartyState(name="x")) or "", lying)):
        recorder.save_snapshot(snapshot)
        assert replay_stream(recorder, stream, apply_party, PartyState()) == (whole, 3)
    recorder.save_snapshot(Snapshot(stream, 2, version, lying))
    assert replay_stream(recorder, stream, apply_party, PartyState())[0].name == "a lie"  # used: it fits
    # A closure (an actor's apply with side effects of its own) never uses a snapshot.
    seen: list[Event] = []

    def remembering(state: PartyState, event: Event) -> PartyState:
        seen.append(event)
        return apply_party(state, event)

    assert fold_version(remembering, PartyState()) is None
    assert replay_stream(recorder, stream, remembering, PartyState()) == (whole, 3) and seen == events
    assert recorder.drop_snapshots() == 1
    assert recorder.load_snapshot(stream) is None
    assert replay_stream(recorder, stream, apply_party, PartyState()) == (whole, 3)


def test_a_long_fold_leaves_a_snapshot_and_refresh_keeps_them_fresh(
        recorder: EventStore | InMemoryRecorder) -> None:
    stream = "party:n1:p1"
    events = [left(n) for n in range(25)]
    recorder.append(stream, events, 0)
    assert replay_stream(recorder, stream, apply_party, PartyState(), every=30)[1] == 25
    assert recorder.load_snapshot(stream) is None  # fewer than `every` events folded
    assert replay_stream(recorder, stream, apply_party, PartyState(), every=20)[1] == 25
    snapshot = recorder.load_snapshot(stream)
    assert snapshot is not None and snapshot.stream_position == 25
    recorder.append(stream, [left(n) for n in range(25, 40)], 25)
    recorder.append("peer:n1:p1:a", [left(n) for n in range(12)], 0)
    recorder.append("metrics:n1:p1:a", [left(n) for n in range(12)], 0)  # no fold of its own
    assert refresh_snapshots(recorder, [stream, "peer:n1:p1:a", "metrics:n1:p1:a", "bogus"], every=10) == 2
    assert recorder.load_snapshot(stream).stream_position == 40  # type: ignore[union-attr]
    assert recorder.load_snapshot("metrics:n1:p1:a") is None


def test_db_snapshots_drop(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(sqlite_url) as store:
        store.append("party:n1:p1", [left(n) for n in range(3)], 0)
        assert refresh_snapshots(store, ["party:n1:p1"], every=1) == 1
    assert cli.main(["db", "snapshots", "--db", sqlite_url]) == 0
    assert "1 snapshot" in capsys.readouterr().out
    assert cli.main(["db", "snapshots", "--drop", "--db", sqlite_url]) == 0
    assert "dropped 1 snapshot" in capsys.readouterr().out
    with open_store(sqlite_url) as store:
        assert store.load_snapshot("party:n1:p1") is None


def test_refresh_prepares_the_relay_monitors_start(recorder: EventStore | InMemoryRecorder) -> None:
    from events import types as ev
    from events.fold import RelayState, apply_relay

    stream, relay = "relay:n1:203.0.113.9:8668", "203.0.113.9:8668"
    events = [ev.RelayProbed(relay=relay, probes=3, answered=3, rtt_ms=float(n)) for n in range(12)]
    recorder.append(stream, events, 0)
    assert refresh_snapshots(recorder, [stream], every=10) == 1
    state, position = load_state(recorder, stream, apply_relay, RelayState(relay=relay))
    assert position == 12 and state == _fold(apply_relay, RelayState(relay=relay), events)
    assert load_state(recorder, stream, apply_relay, RelayState())[1] == 0  # another start: not used
