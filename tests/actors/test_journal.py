"""The actors' stream writer: idempotent retries, one writer per stream, on both recorders."""

from __future__ import annotations

import pytest

from actors.journal import StreamWriter, memory_recorder
from events import types as ev
from store import ConcurrencyError, open_store

EVENTS = [ev.PartyCreated(party_id="p1", name="LAN", host_peer_id="a"),
          ev.PartyLeft(party_id="p1", reason="done")]


@pytest.fixture(params=["memory", "sqlite"])
def recorder(request: pytest.FixtureRequest, sqlite_url: str):  # type: ignore[no-untyped-def]
    if request.param == "memory":
        yield memory_recorder(f"journal-{id(request)}")
        return
    store = open_store(sqlite_url)
    try:
        yield store
    finally:
        store.close()


def test_a_retry_of_the_same_append_stores_nothing_twice(recorder) -> None:  # type: ignore[no-untyped-def]
    writer = StreamWriter(recorder, "party:p1", "inc-1", {"node_id": "n1", "actor": "party/p1"})
    first = writer.append(EVENTS, "CreateParty")
    writer.position = 0  # thespian retried the message before the actor moved on
    again = writer.append(EVENTS, "CreateParty")
    assert [r.stream_position for r in again] == [r.stream_position for r in first] == [1, 2]
    assert [r.event for r in recorder.read_stream("party:p1")] == EVENTS
    assert recorder.read_stream("party:p1")[0].metadata["actor"] == "party/p1"


def test_another_incarnation_cannot_write_at_a_taken_position(recorder) -> None:  # type: ignore[no-untyped-def]
    StreamWriter(recorder, "party:p1", "inc-1", {}).append(EVENTS, "x")
    stale = StreamWriter(recorder, "party:p1", "inc-2", {})
    with pytest.raises(ConcurrencyError):
        stale.append(EVENTS[:1], "x")
    fresh = StreamWriter(recorder, "party:p1", "inc-3", {})
    state = fresh.replay(lambda count, _event: count + 1, 0)
    assert (state, fresh.position) == (2, 2)
    assert fresh.append([ev.PartyLeft(party_id="p1", reason="again")], "y")[0].stream_position == 3
