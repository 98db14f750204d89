"""Snapshots: fold a stream from its newest usable snapshot, and keep snapshots fresh.

A snapshot is a cache. It is used only when its fold version (``events.state_codec``:
the fold code, the event types and the initial state) matches the running code and
its JSON decodes into the state type; otherwise it is ignored and the stream is
folded from the start. ``drop_snapshots`` forgets them all and nothing is lost: the
next fold rebuilds them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from events.base import Event
from events.fold import (
    ConnectionState,
    NodeState,
    PartyState,
    RelayState,
    apply_connection,
    apply_node,
    apply_party,
    apply_relay,
)
from events.state_codec import StateDecodeError, decode_state, encode_state, fold_version
from events.streams import NODE, PARTY, PEER, RELAY, StreamIdError, parse_stream_id
from store.base import Recorder, Snapshot, SnapshotKeeper, StoreError

S = TypeVar("S")

# Save a new snapshot once a fold has read this many events past the last one. A
# restart then folds at most about this many events a stream, about what a new
# connection's stream holds after its first hour (8 to 20), so a node restarts about
# as fast after a year as when fresh; a snapshot is one row per stream rewritten in
# place, so saving this often costs one small UPDATE per 20 events.
SNAPSHOT_EVERY = 20

# The folds that actors start their streams with, by stream kind, and their initial state
# from the stream id's rest: what ``refresh_snapshots`` prepares ahead of a restart.
DEFAULT_FOLDS: dict[str, tuple[Callable[[Any, Event], Any], Callable[[str], Any]]] = {
    PARTY: (apply_party, lambda _rest: PartyState()),
    PEER: (apply_connection, lambda _rest: ConnectionState()),
    NODE: (apply_node, lambda _rest: NodeState()),
    RELAY: (apply_relay, lambda relay: RelayState(relay=relay)),  # the relay monitor's start
}


def _keeper(recorder: Recorder) -> SnapshotKeeper | None:
    return recorder if isinstance(recorder, SnapshotKeeper) else None


def load_state(recorder: Recorder, stream_id: str, apply: Callable[[S, Event], S],
               initial: S, *, check_head: bool = True) -> tuple[S, int]:
    """The state and position of the stream's usable snapshot, else ``(initial, 0)``.

    ``check_head=False`` leaves out the check that the snapshot is not beyond the
    stream's head, for a caller that reads the events after it anyway and checks the
    head only when there are none.
    """
    keeper = _keeper(recorder)
    version = fold_version(apply, initial)
    if keeper is None or version is None:
        return initial, 0
    try:
        snapshot = keeper.load_snapshot(stream_id)
    except StoreError:
        return initial, 0  # a cache that cannot be read is a cache miss
    if snapshot is None or snapshot.fold_version != version or snapshot.stream_position <= 0:
        return initial, 0
    try:
        state = decode_state(type(initial), snapshot.state)
    except StateDecodeError:
        return initial, 0
    if check_head and snapshot.stream_position > recorder.stream_position(stream_id):
        return initial, 0  # from another copy of the log: not about these events
    return state, snapshot.stream_position


def save_state(recorder: Recorder, stream_id: str, apply: Callable[[S, Event], S], initial: S,
               state: S, position: int) -> bool:
    """Store ``state`` as the stream's snapshot after ``position``; False if it cannot be kept."""
    keeper = _keeper(recorder)
    version = fold_version(apply, initial)
    if keeper is None or version is None or position <= 0:
        return False
    try:
        keeper.save_snapshot(Snapshot(stream_id, position, version, encode_state(state)))
    except (StoreError, TypeError, ValueError):
        return False  # read-only, locked or full: the next fold simply reads more events
    return True


def replay_stream(recorder: Recorder, stream_id: str, apply: Callable[[S, Event], S], initial: S,
                  *, after: int = 0, every: int = SNAPSHOT_EVERY) -> tuple[S, int]:
    """Fold the stream (from its snapshot when ``after`` is 0); returns the state and position.

    Saves a new snapshot when it had to fold at least ``every`` events. ``initial`` is
    the state after position ``after`` (the empty state when 0).
    """
    state, position = (initial, after)
    if after == 0:
        state, position = load_state(recorder, stream_id, apply, initial, check_head=False)
    records = recorder.read_stream(stream_id, position + 1)
    if after == 0 and position and not records and recorder.stream_position(stream_id) < position:
        # A snapshot beyond the stream's head is from another copy of the log: not ours.
        state, position = initial, 0
        records = recorder.read_stream(stream_id, 1)
    folded = 0
    for record in records:
        state = apply(state, record.event)
        position = record.stream_position
        folded += 1
    if after == 0 and folded >= every:
        save_state(recorder, stream_id, apply, initial, state, position)
    return state, position


def refresh_snapshots(recorder: Recorder, streams: list[str], *, every: int = SNAPSHOT_EVERY) -> int:
    """Bring the snapshot of each stream of a known kind up to date; returns how many were saved.

    What a running node calls now and then (with pruning), so that the first restart
    after months of uptime does not fold months of events.
    """
    saved = 0
    for stream_id in streams:
        try:
            parsed = parse_stream_id(stream_id)
        except StreamIdError:
            continue
        fold = DEFAULT_FOLDS.get(parsed.kind)
        if fold is None:
            continue
        apply, start = fold
        initial = start(parsed.rest)
        state, position = load_state(recorder, stream_id, apply, initial)
        if recorder.stream_position(stream_id) - position < every:
            continue
        for record in recorder.read_stream(stream_id, position + 1):
            state = apply(state, record.event)
            position = record.stream_position
        saved += save_state(recorder, stream_id, apply, initial, state, position)
    return saved
