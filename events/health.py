"""Whether a relay was silent at a moment, read from the records around it.

A ``RelayDegraded`` near a drop says little alone: a relay degraded half a minute earlier may
have answered again since, and a relay whose monitor notices the silence a little after the
drop was silent at it all the same. The writer of a node's own account and ``diagnose`` read
a relay's health the same way, here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from events import types as ev

# A relay degraded before the moment that answers again this soon after it was not silent at it.
ANSWERED_AGAIN_WITHIN = timedelta(seconds=5)


class Recorded(Protocol):
    @property
    def recorded_at(self) -> datetime: ...
    @property
    def global_position(self) -> int: ...
    @property
    def event(self) -> ev.Event: ...


R = TypeVar("R", bound=Recorded)


def relay_answered(event: ev.Event, relay: str) -> bool:
    return (isinstance(event, ev.RelayProbed) and event.relay == relay and event.answered > 0) or \
        (isinstance(event, ev.RelaySelected) and event.relay == relay and event.rtt_ms is not None)


def silent_at(records: Iterable[R], relay: str, at: datetime, span: timedelta) -> R | None:
    """The record saying ``relay`` stopped answering around ``at``, if it had: degraded at ``at``
    (its last word about it before ``at``) and no answer within ``ANSWERED_AGAIN_WITHIN`` after,
    or degraded within ``span`` after ``at`` before any answer."""
    def about_health(event: ev.Event) -> bool:
        return relay_answered(event, relay) or (isinstance(event, ev.RelayDegraded) and event.relay == relay)

    health = sorted((r for r in records if abs(r.recorded_at - at) <= span and about_health(r.event)),
                    key=lambda r: r.global_position)
    before = [r for r in health if r.recorded_at <= at]
    after = [r for r in health if r.recorded_at > at]
    if before and isinstance(before[-1].event, ev.RelayDegraded):
        answered_soon = any(r.recorded_at - at <= ANSWERED_AGAIN_WITHIN for r in after
                            if not isinstance(r.event, ev.RelayDegraded))
        return None if answered_soon else before[-1]
    if after and isinstance(after[0].event, ev.RelayDegraded):
        return after[0]
    return None
