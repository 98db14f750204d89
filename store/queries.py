"""Statements shared by the sync and async read paths, and row -> RecordedEvent."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from loguru import logger
from sqlalchemy import Select, and_, or_, select

from events.base import EventError
from store.base import RecordedEvent, StoreError
from store.codec import RowDecoder, decode_metadata
from store.errors import EventDecodeError
from store.schema import events, log_head

OnError = Literal["raise", "skip"] | Callable[[EventDecodeError], None]

COLUMNS = (events.c.global_position, events.c.stream_id, events.c.stream_position, events.c.recorded_at,
           events.c.event_type, events.c.event_version, events.c.payload, events.c.metadata)


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants. ``stream`` is a stream id or a prefix of one."""

    stream: str | None = None
    types: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.stream or self.types or self.since or self.until)


def utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def where_clauses(selection: EventFilter) -> list[Any]:
    clauses: list[Any] = []
    if selection.stream:
        clauses.append(or_(events.c.stream_id == selection.stream,
                           events.c.stream_id.like(_escape_like(selection.stream) + "%", escape="\\")))
    if selection.types:
        clauses.append(events.c.event_type.in_(list(selection.types)))
    if selection.since is not None:
        clauses.append(events.c.recorded_at >= utc(selection.since))
    if selection.until is not None:
        clauses.append(events.c.recorded_at <= utc(selection.until))
    return clauses


def page_query(after: int, upto: int | None, limit: int, selection: EventFilter) -> Select[Any]:
    clauses = [events.c.global_position > after, *where_clauses(selection)]
    if upto is not None:
        clauses.append(events.c.global_position <= upto)
    return select(*COLUMNS).where(and_(*clauses)).order_by(events.c.global_position).limit(limit)


def stream_query(stream_id: str, first: int, last: int | None = None) -> Select[Any]:
    clauses = [events.c.stream_id == stream_id, events.c.stream_position >= first]
    if last is not None:
        clauses.append(events.c.stream_position <= last)
    return select(*COLUMNS).where(and_(*clauses)).order_by(events.c.stream_position)


HEAD_QUERY = select(log_head.c.last_global_position).where(log_head.c.id == 1)


class RowReader:
    """Turns result rows into RecordedEvents, applying the decode-error policy."""

    def __init__(self, on_error: OnError = "raise") -> None:
        if not (callable(on_error) or on_error in ("raise", "skip")):
            raise StoreError(f"on_error must be 'raise', 'skip' or a callable, not {on_error!r}")
        self.on_error = on_error
        self.decoder = RowDecoder()
        self.skipped: list[EventDecodeError] = []

    def record(self, row: Sequence[Any]) -> RecordedEvent | None:
        position, stream_id, stream_position, recorded_at, event_type, version, payload, metadata = row
        try:
            event = self.decoder.decode(event_type, version, payload)
            meta = decode_metadata(metadata)
        except EventError as cause:
            error = EventDecodeError(position, stream_id, stream_position, event_type, version, cause)
            if self.on_error == "raise":
                raise error from None
            self.skipped.append(error)
            if callable(self.on_error):
                self.on_error(error)
            else:
                logger.warning("skipped {}", error)
            return None
        if recorded_at.tzinfo is None:
            recorded_at = recorded_at.replace(tzinfo=UTC)
        return RecordedEvent(global_position=position, stream_id=stream_id, stream_position=stream_position,
                             recorded_at=recorded_at, event=event, metadata=meta)
