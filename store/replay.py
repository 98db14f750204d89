"""Replay: fold the log into the state of every party, connection, relay and node.

The fold is ``events.fold.apply_world``, the same apply functions the live
actors use, so the state replayed at position N is the state they had after
event N. Rows are fetched as raw tuples through the DBAPI cursor in large
chunks and decoded with the cached ``RowDecoder``: no per-row ORM or Core
result processing, which is what keeps replay above 200k events/s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from events import types as ev
from events.base import Event, EventError
from events.fold import World, apply_abrupt_end, apply_world
from events.streams import node_of
from store.codec import RowDecoder
from store.errors import EventDecodeError, translated
from store.queries import OnError, RowReader
from store.sql import EventStore

CHUNK = 5000


def iter_events(store: EventStore, after: int = 0, upto: int | None = None,
                on_error: OnError = "raise") -> Iterator[tuple[int, str, Event]]:
    """``(global_position, stream_id, event)`` in global order, from one consistent snapshot."""
    policy = RowReader(on_error)  # validates on_error and keeps the skipped rows
    decoder = RowDecoder()
    mark = "%s" if store.dialect == "postgresql" else "?"
    # stream_position is left out (one column less a row); a bad row looks it up.
    sql = ("SELECT global_position, stream_id, event_type, event_version, payload"
           f" FROM events WHERE global_position > {mark}")
    params: tuple[int, ...] = (after,)
    if upto is not None:
        sql += f" AND global_position <= {mark}"
        params = (after, upto)
    sql += " ORDER BY global_position"
    plans: dict[str, dict[int, Callable[[Any], Event]]] = {}
    with translated(store.where), store.reader_engine.connect() as connection, connection.begin():
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(CHUNK):
                for position, stream_id, event_type, version, payload in rows:
                    try:
                        versions = plans.get(event_type)
                        if versions is None:
                            versions = plans[event_type] = {}
                        plan = versions.get(version)
                        if plan is None:
                            plan = versions[version] = decoder.plan(event_type, version)
                        event = plan(payload)
                    except EventError as cause:
                        lookup = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
                        lookup.execute(f"SELECT stream_position FROM events WHERE global_position = {mark}",
                                       (position,))
                        stream_position = lookup.fetchone()[0]
                        lookup.close()
                        error = EventDecodeError(position, stream_id, stream_position, event_type,
                                                 version, cause)
                        if policy.on_error == "raise":
                            raise error from None
                        policy.skipped.append(error)
                        if callable(policy.on_error):
                            policy.on_error(error)
                        continue
                    yield position, stream_id, event
        finally:
            cursor.close()


def replay(store: EventStore, at: datetime | None = None, position: int | None = None, *,
           start: World | None = None, node: str | None = None, show_downtime: bool = True,
           on_error: OnError = "raise") -> World:
    """The World after every event up to ``position`` and recorded at or before ``at``.

    With neither, the whole log. ``start`` continues from an earlier replay (its
    ``position``) without modifying it. ``node`` keeps only that node's streams (a
    database that several nodes share). ``on_error`` as in ``EventStore.read_all``:
    by default a row that cannot be decoded stops the replay with an error naming it.

    A node that died records so only when it starts again (``NodeRunEndedAbruptly``,
    after the downtime). So when the replay stops inside such a downtime, it looks
    ahead for that record and shows the node down and its connections interrupted.
    Those marks are for showing a moment; a World meant to be continued with ``start``
    comes from ``show_downtime=False``.
    """
    upto = position
    if at is not None:
        by_time = store.position_at(at)
        upto = by_time if upto is None else min(upto, by_time)
    world = _copy(start) if start is not None else World()
    last = world.position
    owners: dict[str, str | None] = {}
    for global_position, stream_id, event in iter_events(store, world.position, upto, on_error):
        if node is not None:
            owner = owners.get(stream_id, "")
            if owner == "":
                owner = owners[stream_id] = node_of(stream_id)
            if owner != node:
                last = global_position
                continue
        apply_world(world, stream_id, event)
        last = global_position
    if upto is not None and show_downtime:
        for crash in abrupt_ends_after(store, upto, at):
            if node is None or crash.node_id == node:
                apply_abrupt_end(world, crash)
    return replace(world, position=last)


def abrupt_ends_after(store: EventStore, position: int,
                      at: datetime | None = None) -> list[ev.NodeRunEndedAbruptly]:
    """Each node's first abrupt-end record after ``position`` whose downtime covers that moment.

    The downtime began after the node's last write (``last_global_position``) and its
    time (``last_recorded_at``): both must lie before the moment asked about.
    """
    first: dict[str, ev.NodeRunEndedAbruptly] = {}
    for record in store.read_all(position, types=["NodeRunEndedAbruptly"]):
        event = record.event
        if isinstance(event, ev.NodeRunEndedAbruptly) and event.node_id not in first:
            first[event.node_id] = event
    covering = []
    for event in first.values():
        if event.last_global_position > position:
            continue
        if at is not None:
            try:
                ended = datetime.fromisoformat(event.last_recorded_at)
            except ValueError:
                continue  # a hostile or broken time cannot place the downtime
            if ended.tzinfo is None:
                ended = ended.replace(tzinfo=UTC)
            if ended >= at:
                continue
        covering.append(event)
    return covering


def _copy(world: World) -> World:
    # States are frozen; only the dicts that apply_world fills in place need copying.
    return World(parties=dict(world.parties), connections=dict(world.connections),
                 relays=dict(world.relays), nodes=dict(world.nodes), position=world.position)
