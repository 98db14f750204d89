"""Times as people type and read them.

Input (``--at``, ``--since``, ``--until``): ``now``; a clock time ``21:03`` or ``21:03:15``
(the latest such moment that is not in the future); ``today 21:03`` / ``yesterday 21:03``;
a relative time ``-2h``, ``10m ago``, ``90s ago``, ``1h30m ago`` (or just ``2h``); or ISO 8601 (a date,
or a date and time; without an offset it is local time). Output: local time with the
zone's name, or UTC with ``--utc``; JSON is always ISO 8601 with its offset.

``--at`` names a span, as a person means it (``parse_window``): ``21:03`` is the whole minute
21:03:00-21:03:59, ``21:03:04`` the second, a bare date the day; ``now`` and relative times are
an instant. The commands that look for something take what lies in that span, else the
nearest within ``NEAR`` either side, and say how far it is from what was asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Annotated

import typer

from commands.common import UsageError

UtcOption = Annotated[bool, typer.Option("--utc", help="Show times in UTC instead of the local zone.")]
TIME_FORMS = "21:03, yesterday 21:03, 2026-11-25T21:03, 10m ago, -2h or now"

_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400}
_AMOUNT = r"(\d+(?:\.\d+)?)\s*([a-z]+)"
_RELATIVE = re.compile(rf"^-?\s*((?:{_AMOUNT}\s*)+)(?:\s+ago)?$")
_CLOCK = re.compile(r"^(?:(today|yesterday)\s+)?(\d{1,2}):(\d\d)(?::(\d\d(?:\.\d+)?))?$")
# Beyond this, a relative time is a typo, not a question about the log.
MAX_RELATIVE = timedelta(days=3660)
# How far outside the span asked about a command still takes the nearest incident or row: a
# person's "about 21:03" is off by a few minutes, not by an hour.
NEAR = timedelta(minutes=5)
_SECONDS = re.compile(r"\d{1,2}:\d\d:\d\d(\.\d+)?")
_MINUTES = re.compile(r"\d{1,2}:\d\d")
_DATE_ONLY = re.compile(r"^\d{4}-\d\d-\d\d$")


@dataclass(frozen=True)
class TimeWindow:
    """The span a typed time stands for: ``start`` inclusive, ``end`` exclusive (both UTC), as typed."""

    start: datetime
    end: datetime
    text: str

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment < self.end if self.end > self.start else moment == self.start

    @property
    def last(self) -> datetime:
        """The last moment of the span (its end, less a microsecond): what a state "at 21:03" shows."""
        return self.end - timedelta(microseconds=1) if self.end > self.start else self.start

    def distance(self, moment: datetime) -> timedelta:
        """How far ``moment`` lies outside the span (zero inside it)."""
        if self.holds(moment):
            return timedelta(0)
        return self.start - moment if moment < self.start else moment - self.last

    def offset(self, moment: datetime) -> float:
        """Seconds from the span's start, as a person reads "21:03" (21:03:00): negative before it."""
        return (moment - self.start).total_seconds()

    def json(self) -> dict[str, str]:
        return {"text": self.text, "start": iso(self.start), "end": iso(self.end)}

    def label(self, utc: bool = False) -> str:
        """The span as typed; with ``--utc`` its start in UTC, at the precision typed (the
        printed times are UTC then, and "21:03" beside them would read as UTC too)."""
        typed_iso = re.match(r"\d{4}-\d\d-\d\d", self.text.strip()) is not None
        if not utc and not typed_iso:
            return self.text
        span = (self.end - self.start).total_seconds()
        form = ("%H:%M" if span == 60 else "%H:%M:%S" if span == 1 else "%Y-%m-%d" if span >= 82800
                else "%H:%M:%S.%f")
        if typed_iso and span < 82800:
            form = f"%Y-%m-%d {form}"  # an ISO time may carry another offset: say it in ours
        start = self.start.astimezone(display_zone(utc))
        return f"{start.strftime(form)} {start.strftime('%Z') or 'local'}"


def parse_window(text: str, option: str, now: datetime | None = None) -> TimeWindow:
    """The span ``text`` names (see the module's docstring); a UsageError naming ``option`` otherwise."""
    start = parse_time(text, option, now)
    value = " ".join(text.strip().lower().split())
    if value in ("today", "yesterday") or _DATE_ONLY.match(value):
        # A day, as the local calendar counts it (23 or 25 hours across a DST change).
        local = start.astimezone()
        following = datetime.combine(local.date() + timedelta(days=1), time()).astimezone()
        return TimeWindow(start, following.astimezone(UTC), text.strip())
    seconds = _SECONDS.search(value)
    if seconds:
        span = timedelta(0) if seconds.group(1) else timedelta(seconds=1)
    elif _MINUTES.search(value):
        span = timedelta(minutes=1)
    else:  # now, 10m ago: an instant
        span = timedelta(0)
    return TimeWindow(start, start + span, text.strip())


def distance_words(seconds: float) -> str:
    """``4 s``, ``2 min 10 s``, ``1 h 5 min``: a distance as a person says it."""
    whole = round(abs(seconds))
    if whole < 60:
        return f"{abs(seconds):.0f} s" if whole else f"{abs(seconds):.1f} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"


def relative_words(window: TimeWindow, moment: datetime, utc: bool = False) -> str:
    """``4 s after 21:03``, ``1 min before 21:03:04``: where ``moment`` lies from what was typed."""
    offset = window.offset(moment)
    if offset == 0:
        return f"at {window.label(utc)}"
    return f"{distance_words(offset)} {'after' if offset > 0 else 'before'} {window.label(utc)}"


def parse_time(text: str, option: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime for what the user typed; a UsageError naming ``option`` otherwise."""
    value = " ".join(text.strip().lower().split())
    current = (now or datetime.now(UTC)).astimezone()
    try:
        moment = _parse(value, current)
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise UsageError(f"{option}: cannot read {text!r} as a time; use {TIME_FORMS}")
    return moment.astimezone(UTC)


def _parse(value: str, current: datetime) -> datetime | None:
    if value == "now":
        return current
    if value in ("today", "yesterday"):
        day = current.date() - timedelta(days=value == "yesterday")
        return datetime.combine(day, time()).astimezone()
    clock = _CLOCK.match(value)
    if clock:
        return _clock(clock, current)
    relative = _RELATIVE.match(value)
    if relative:  # "-2h", "2h ago", and a bare "2h" (the log has no future, so it means ago too)
        total = 0.0
        for amount, unit in re.findall(_AMOUNT, relative.group(1)):
            if unit not in _UNITS:
                return None
            total += float(amount) * _UNITS[unit]
        if timedelta(seconds=total) > MAX_RELATIVE:
            return None
        return current - timedelta(seconds=total)
    moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the user's local zone
    return moment


def _clock(match: re.Match[str], current: datetime) -> datetime:
    day_word, hours, minutes, seconds = match.groups()
    second = float(seconds or 0)
    wall = time(int(hours), int(minutes), int(second), min(999_999, round((second % 1) * 1_000_000)))
    day: date = current.date() - timedelta(days=day_word == "yesterday")
    moment = datetime.combine(day, wall).astimezone()
    if day_word is None and moment > current:
        # "21:03" at 09:00 means last night, not tonight: the log has no future.
        moment = datetime.combine(day - timedelta(days=1), wall).astimezone()
    return moment


def display_zone(utc: bool) -> tzinfo | None:
    """None means the local zone (``astimezone()`` with no argument)."""
    return UTC if utc else None


def zone_name(utc: bool = False) -> str:
    if utc:
        return "UTC"
    return datetime.now().astimezone().strftime("%Z") or "local"


def shown(moment: datetime, utc: bool = False) -> str:
    """A moment for a table: milliseconds, in the local zone or UTC (the header names it)."""
    return moment.astimezone(display_zone(utc)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def clock(moment: datetime, utc: bool = False) -> str:
    """``21:03:04``: a moment's time of day, as a person names it."""
    return moment.astimezone(display_zone(utc)).strftime("%H:%M:%S")


def shown_with_zone(moment: datetime, utc: bool = False) -> str:
    return f"{shown(moment, utc)} {zone_name(utc)}"


def iso(moment: datetime) -> str:
    """ISO 8601 with an offset; a naive value is UTC (SQLite keeps UTC without one)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()
