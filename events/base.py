"""The event base class, the registry by type name, the JSON codec and upcasting.

An event is an immutable fact in the past tense. Each concrete type is a frozen
dataclass registered by its class name with a schema ``version``. Stored rows are
never rewritten: an older version is upcast step by step when it is read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


class EventError(Exception):
    """Base of every error raised while encoding or decoding events."""


class UnknownEventType(EventError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class FutureEventVersion(EventError):
    def __init__(self, event_type: str, stored: int, known: int) -> None:
        super().__init__(
            f"{event_type} version {stored} is newer than this program knows (v{known}); upgrade LANrage"
        )
        self.event_type = event_type
        self.stored = stored
        self.known = known


class MalformedEvent(EventError):
    """A payload that is not valid JSON or does not fit its event type."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events. Subclasses are frozen, keyword-only dataclasses."""

    version: ClassVar[int] = 1

    @property
    def event_type(self) -> str:
        return type(self).__name__

    def to_payload(self) -> Payload:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


E = TypeVar("E", bound=type[Event])

_registry: dict[str, type[Event]] = {}
# (event_type, from_version) -> function turning that version's payload into the next one.
_upcasters: dict[tuple[str, int], Upcaster] = {}


def register(cls: E) -> E:
    """Class decorator: make an event type known to the codec by its class name."""
    name = cls.__name__
    if name in _registry and _registry[name] is not cls:
        raise EventError(f"event type {name} registered twice")
    _registry[name] = cls
    return cls


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: register the step that turns ``from_version`` into ``from_version + 1``."""

    def decorate(function: Upcaster) -> Upcaster:
        _upcasters[(event_type, from_version)] = function
        return function

    return decorate


def event_class(event_type: str) -> type[Event]:
    try:
        return _registry[event_type]
    except KeyError:
        raise UnknownEventType(event_type) from None


def registered_types() -> Mapping[str, type[Event]]:
    return dict(_registry)


def upcast(event_type: str, version: int, payload: Payload) -> Payload:
    cls = event_class(event_type)
    if version > cls.version:
        raise FutureEventVersion(event_type, version, cls.version)
    while version < cls.version:
        step = _upcasters.get((event_type, version))
        if step is None:
            raise MalformedEvent(f"no upcaster for {event_type} v{version} -> v{version + 1}")
        payload = step(dict(payload))
        version += 1
    return payload


def encode(event: Event) -> tuple[str, int, str]:
    """Return (event_type, version, JSON payload) for storage."""
    return event.event_type, type(event).version, json.dumps(
        event.to_payload(), separators=(",", ":"), sort_keys=True
    )


def decode(event_type: str, version: int, payload: str | bytes | Payload) -> Event:
    """Rebuild an event from storage, upcasting older versions."""
    cls = event_class(event_type)
    if isinstance(payload, str | bytes):
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as error:
            raise MalformedEvent(f"{event_type} payload is not JSON: {error}") from None
    else:
        data = dict(payload)
    if not isinstance(data, dict):
        raise MalformedEvent(f"{event_type} payload is not a JSON object")
    data = upcast(event_type, version, data)
    names = {field.name for field in dataclasses.fields(cls)}
    try:
        return cls(**{key: _freeze(value) for key, value in data.items() if key in names})
    except TypeError as error:
        raise MalformedEvent(f"{event_type} payload does not fit: {error}") from None


def _freeze(value: Any) -> Any:
    """JSON lists come back as tuples so that decoded events stay immutable and equal."""
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value
