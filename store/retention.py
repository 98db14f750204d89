"""Retention: metric samples and probe records are kept for a window; transitions forever.

What may go: ``MetricsSampled``, ``RelayProbed``, ``RelayCountersSampled`` and
``NodeAlive`` (a running node's sign of life) rows recorded before ``now - keep`` (30
days by default). What never goes: any other event, a sample that changed a state
transition (a ``RelayProbed`` that cleared a relay's ``degraded``), a stream's first
row (it makes the stream's state exist) and its newest row (so its position, and the
next append's, never move back).

Rows leave from the head of a stream: every position above the stream's recorded
low-water mark (table ``stream_low_water``) is still stored, and at or below it only
the rows retention keeps remain. Global positions are never reused (the log head is
untouched). Replays and the ``connection_history`` view give the same transitions
after pruning; ``peer_metrics`` shows the samples of the window.

``upkeep`` is what a running node calls every ``UPKEEP_INTERVAL_S``: prune, then
bring the snapshots up to date.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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
from events.streams import METRICS, NODE, PARTY, PEER, RELAY, RELAY_SERVER, StreamIdError, parse_stream_id
from store.base import StoreError
from store.errors import translated
from store.snapshots import refresh_snapshots
from store.sql import EventStore

PRUNABLE_TYPES = ("MetricsSampled", "RelayProbed", "RelayCountersSampled", "NodeAlive")
DEFAULT_KEEP = timedelta(days=30)
# An hour of a 16-peer node's samples is about a thousand rows: pruning that often
# keeps each delete short, and a log never holds more than an hour past its window.
UPKEEP_INTERVAL_S = 3600.0
# Rows deleted per transaction: a few ms of write lock each, far under the busy
# timeout (5 s) that the actors' appends wait for it.
DELETE_CHUNK = 5000
# The named checkpoint (event_checkpoints) of the last upkeep's snapshot refresh.
UPKEEP_CHECKPOINT = "upkeep-snapshots"

# Fields of the fold states that only samples feed: pruning may change them, nothing else.
SAMPLE_FIELDS: dict[type, frozenset[str]] = {
    ConnectionState: frozenset({"latency_ms", "jitter_ms", "loss", "quality", "rx_bytes", "tx_bytes"}),
    RelayState: frozenset({"rtt_ms", "probes", "answered", "forwarded_packets"}),
}

_FOLDS: dict[str, tuple[Callable[[Any, Event], Any], Any]] = {
    PEER: (apply_connection, ConnectionState()),
    RELAY: (apply_relay, RelayState()),
    RELAY_SERVER: (apply_relay, RelayState()),
    NODE: (apply_node, NodeState()),
    PARTY: (apply_party, PartyState()),
}


def transitions(state: Any) -> tuple[Any, ...]:
    """The part of a fold state that pruning must never change."""
    skip = SAMPLE_FIELDS.get(type(state), frozenset())
    return tuple(getattr(state, field.name) for field in dataclasses.fields(state) if field.name not in skip)


def parse_keep(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``3600s`` (a bare number is days); ValueError otherwise."""
    value = text.strip().lower()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    unit = value[-1:] if value[-1:] in units else "d"
    number = value[:-1] if value[-1:] in units else value
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a duration; use e.g. 30d, 12h or 90m") from None
    if not amount >= 0 or amount > 36500 * 86400:
        raise ValueError(f"a retention window must be between 0 and 100 years, not {text!r}")
    return timedelta(seconds=amount * units[unit])


@dataclass(frozen=True)
class PruneReport:
    cutoff: datetime
    rows: int
    streams: int
    by_kind: dict[str, int]


def prune(store: EventStore, keep: timedelta = DEFAULT_KEEP, *, now: datetime | None = None) -> PruneReport:
    """Delete samples and probe records recorded before ``now - keep`` (see the module doc)."""
    if keep < timedelta(0):
        raise StoreError(f"a retention window cannot be negative ({keep})")
    if store.readonly:
        raise StoreError(f"database {store.where} was opened read-only")
    cutoff = (now or datetime.now(UTC)) - keep
    by_kind: dict[str, int] = {}
    streams = 0
    for stream_id, bound in _candidates(store, cutoff, metrics=True):
        count = _prune_range(store, stream_id, bound, cutoff)
        if count:
            streams += 1
            by_kind[METRICS] = by_kind.get(METRICS, 0) + count
    for stream_id, bound in _candidates(store, cutoff, metrics=False):
        doomed = _removable(store, stream_id, bound, cutoff)
        if doomed:
            _delete_rows(store, stream_id, doomed, cutoff)
            streams += 1
            kind = stream_id.split(":", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + len(doomed)
    return PruneReport(cutoff, sum(by_kind.values()), streams, by_kind)


def _fetch(store: EventStore, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with translated(store.where), store.reader_engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()


def _types_clause(mark: str) -> str:
    return f"event_type IN ({', '.join([mark] * len(PRUNABLE_TYPES))})"


def _candidates(store: EventStore, cutoff: datetime, *, metrics: bool) -> list[tuple[str, int]]:
    """Streams with prunable rows older than ``cutoff``, each with the highest such position."""
    mark = store.mark
    which = "LIKE" if metrics else "NOT LIKE"
    rows = _fetch(store, f"SELECT stream_id, MAX(stream_position) FROM events WHERE recorded_at < {mark}"
                         f" AND {_types_clause(mark)} AND stream_id {which} {mark} GROUP BY stream_id",
                  (store.time_param(cutoff), *PRUNABLE_TYPES, f"{METRICS}:%"))
    return [(str(stream_id), int(bound)) for stream_id, bound in rows]


def _newest(store: EventStore, stream_id: str) -> int:
    return int(_fetch(store, f"SELECT MAX(stream_position) FROM events WHERE stream_id = {store.mark}",
                      (stream_id,))[0][0] or 0)


def _prune_range(store: EventStore, stream_id: str, bound: int, cutoff: datetime) -> int:
    """A samples-only stream: delete its prunable rows up to ``bound`` (never its newest row)."""
    bound = min(bound, _newest(store, stream_id) - 1)
    if bound <= 0:
        return 0
    mark = store.mark
    low = int(_fetch(store, f"SELECT COALESCE(MIN(stream_position), 1) FROM events WHERE stream_id = {mark}",
                     (stream_id,))[0][0])
    total = 0
    for start in range(low, bound + 1, DELETE_CHUNK):
        end = min(start + DELETE_CHUNK - 1, bound)
        deleted: list[int] = []

        def work(cursor: Any, stamp: Any, start: int = start, end: int = end,
                 deleted: list[int] = deleted) -> None:
            cursor.execute(f"DELETE FROM events WHERE stream_id = {mark} AND stream_position BETWEEN {mark}"
                           f" AND {mark} AND recorded_at < {mark} AND {_types_clause(mark)}",
                           (stream_id, start, end, store.time_param(cutoff), *PRUNABLE_TYPES))
            deleted.append(max(cursor.rowcount, 0))
            _mark_low_water(store, cursor, stream_id, end, deleted[0], cutoff, stamp)

        store.write_transaction(work)
        total += deleted[0] if deleted else 0
    return total


def _removable(store: EventStore, stream_id: str, bound: int, cutoff: datetime) -> list[tuple[int, int]]:
    """``(stream_position, global_position)`` of the rows of a mixed stream that may go."""
    try:
        kind = parse_stream_id(stream_id).kind
    except StreamIdError:
        return []  # not a stream of ours: leave it alone
    fold = _FOLDS.get(kind)
    if fold is None:
        return []
    apply, state = fold
    records = store.read_stream(stream_id, on_error="skip")
    if not records:
        return []
    newest = records[-1].stream_position
    doomed = []
    for record in records:
        if record.stream_position > bound:
            break
        before = transitions(state)
        state = apply(state, record.event)
        # The first row makes the stream's state exist, the newest holds its position: both stay.
        if (record.event_type in PRUNABLE_TYPES and record.recorded_at < cutoff
                and record.stream_position not in (1, newest) and transitions(state) == before):
            doomed.append((record.stream_position, record.global_position))
    return doomed


def _delete_rows(store: EventStore, stream_id: str, doomed: list[tuple[int, int]], cutoff: datetime) -> None:
    mark = store.mark
    for start in range(0, len(doomed), DELETE_CHUNK):
        chunk = doomed[start:start + DELETE_CHUNK]

        def work(cursor: Any, stamp: Any, chunk: list[tuple[int, int]] = chunk) -> None:
            positions = [global_position for _, global_position in chunk]
            marks = ", ".join([mark] * len(positions))
            cursor.execute(f"DELETE FROM events WHERE global_position IN ({marks})"
                           f" AND {_types_clause(mark)}", (*positions, *PRUNABLE_TYPES))
            _mark_low_water(store, cursor, stream_id, max(p for p, _ in chunk), max(cursor.rowcount, 0),
                            cutoff, stamp)

        store.write_transaction(work)


def _mark_low_water(store: EventStore, cursor: Any, stream_id: str, position: int, rows: int,
                    cutoff: datetime, stamp: Any) -> None:
    mark = store.mark
    cursor.execute(f"UPDATE stream_low_water SET low_water_position = CASE WHEN low_water_position > {mark}"
                   f" THEN low_water_position ELSE {mark} END, pruned_rows = pruned_rows + {mark},"
                   f" pruned_before = {mark}, updated_at = {mark} WHERE stream_id = {mark}",
                   (position, position, rows, store.time_param(cutoff), stamp, stream_id))
    if cursor.rowcount == 0:
        cursor.execute(f"INSERT INTO stream_low_water (stream_id, low_water_position, pruned_rows,"
                       f" pruned_before, updated_at) VALUES ({mark}, {mark}, {mark}, {mark}, {mark})",
                       (stream_id, position, rows, store.time_param(cutoff), stamp))


def low_water_marks(store: EventStore) -> dict[str, int]:
    """Each pruned stream's low-water mark: positions above it are all stored."""
    return {str(stream): int(position) for stream, position in
            _fetch(store, "SELECT stream_id, low_water_position FROM stream_low_water", ())}


# ------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class KindStats:
    kind: str
    rows: int
    bytes: int  # the rows' text: payload and metadata JSON, stream id and type name
    oldest: datetime | None


@dataclass(frozen=True)
class LogStats:
    kinds: list[KindStats]
    oldest: datetime | None
    database_bytes: int | None  # SQLite: the file's pages; PostgreSQL: the events table with its indexes
    pruned_rows: int
    pruned_streams: int


def log_stats(store: EventStore) -> LogStats:
    """Rows and bytes per stream kind, the oldest event kept, and what retention removed."""
    if store.dialect == "postgresql":
        kind = "split_part(stream_id, ':', 1)"
        size = ("octet_length(payload::text) + octet_length(metadata::text) + octet_length(stream_id)"
                " + octet_length(event_type)")
        database = "SELECT pg_total_relation_size('events')"
    else:
        kind = ("CASE WHEN instr(stream_id, ':') > 0 THEN substr(stream_id, 1, instr(stream_id, ':') - 1)"
                " ELSE stream_id END")
        size = "length(CAST(payload AS BLOB)) + length(CAST(metadata AS BLOB)) + length(stream_id)" \
               " + length(event_type)"
        database = "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
    rows = _fetch(store, f"SELECT {kind} AS kind, COUNT(*), COALESCE(SUM({size}), 0), MIN(recorded_at)"
                         f" FROM events GROUP BY {kind} ORDER BY {kind}", ())
    kinds = [KindStats(str(name), int(count), int(total), _as_utc(oldest))
             for name, count, total, oldest in rows]
    oldest_values = [k.oldest for k in kinds if k.oldest is not None]
    pruned = _fetch(store, "SELECT COALESCE(SUM(pruned_rows), 0), COUNT(*) FROM stream_low_water", ())[0]
    return LogStats(kinds, min(oldest_values) if oldest_values else None,
                    int(_fetch(store, database, ())[0][0]), int(pruned[0]), int(pruned[1]))


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ------------------------------------------------------------------ upkeep


@dataclass(frozen=True)
class UpkeepReport:
    pruned: PruneReport
    snapshots_saved: int


def upkeep(store: EventStore, keep: timedelta = DEFAULT_KEEP, *, now: datetime | None = None) -> UpkeepReport:
    """Prune, then refresh the snapshots: what ``serve`` runs every ``UPKEEP_INTERVAL_S``.

    Only streams written since the last upkeep (checkpoint ``UPKEEP_CHECKPOINT``) are
    looked at for snapshots: the others have not moved.
    """
    report = prune(store, keep, now=now)
    head = store.last_global_position()
    streams = store.streams_since(store.load_checkpoint(UPKEEP_CHECKPOINT))
    saved = refresh_snapshots(store, [s for s in streams if not s.startswith(f"{METRICS}:")])
    store.save_checkpoint(UPKEEP_CHECKPOINT, head)
    return UpkeepReport(report, saved)
