"""Times as people type and read them.

Input (``--at``, ``--since``, ``--until``): ``now``; a clock time ``21:03`` or ``21:03:15``
(the latest such moment that is not in the future); ``today 21:03`` / ``yesterday 21:03``;
a relative time ``-2h``, ``10m ago``, ``90s ago``, ``1h30m ago`` (or just ``2h``); or ISO 8601 (a date,
or a date and time; without an offset it is local time). Output: local time with the
zone's name, or UTC with ``--utc``; JSON is always ISO 8601 with its offset.
"""

from __future__ import annotations

import re
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


def shown_with_zone(moment: datetime, utc: bool = False) -> str:
    return f"{shown(moment, utc)} {zone_name(utc)}"


def iso(moment: datetime) -> str:
    """ISO 8601 with an offset; a naive value is UTC (SQLite keeps UTC without one)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()
