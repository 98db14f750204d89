"""Row <-> event conversion for the store, with a fast path for replay.

``events.base.decode`` is the reference; ``RowDecoder.decode`` gives the same
result (a test compares them for every registered type) but caches, per
``(event_type, version)``, the class and its field names, and only calls the
upcasters when the stored version is older. That keeps decoding at a few
microseconds a row, which is what lets replay pass 200k events/s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from events.base import Event, EventError, MalformedEvent, event_class, upcast

# NaN and infinities are refused: they are not JSON, PostgreSQL's JSONB rejects them and
# SQLite's json_extract calls such a row malformed.
_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode
_dumps_unsorted = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# The C encoder that JSONEncoder.encode builds on every call, built once. No circular
# check: event payloads are flat values and tuples.
_c_encode = getattr(json.encoder, "c_make_encoder", None)
encode_flat = (_c_encode(None, _no_default, json.encoder.encode_basestring_ascii, None, ":", ",",
                          False, False, False) if _c_encode else None)
# orjson parses payloads about twice as fast as the stdlib, which is most of replay's
# cost; it raises a ValueError subclass on bad input, like json.loads.
_loads = orjson.loads


def encode_payload(event: Event) -> str:
    """The event's fields as JSON (the same object as ``events.base.encode`` produces)."""
    cls = type(event)
    if _PLAIN.get(cls) or is_plain(cls):
        # A frozen dataclass without slots keeps exactly its fields in __dict__, in order.
        if encode_flat is not None:
            return "".join(encode_flat(event.__dict__, 0))
        return _dumps_unsorted(event.__dict__)
    return _dumps({name: getattr(event, name) for name in _field_names(cls)})


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    return _dumps(dict(metadata))


_FIELDS: dict[type[Event], tuple[str, ...]] = {}


def is_plain(cls: type) -> bool:
    """Whether instances can be read and built through ``__dict__`` directly (cached)."""
    plain = _PLAIN.get(cls)
    if plain is None:
        plain = _PLAIN[cls] = (dataclasses.is_dataclass(cls) and "__slots__" not in dir(cls)
                               and not hasattr(cls, "__post_init__") and "__init__" not in _custom(cls))
    return plain


def _custom(cls: type) -> set[str]:
    """Names defined by hand (not by @dataclass) anywhere in the class's own hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is not object and "__dataclass_params__" not in vars(klass):
            names.update(vars(klass))
    return names


_PLAIN: dict[type, bool] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(field.name for field in dataclasses.fields(cls))
    return names


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


class RowDecoder:
    """Decodes ``(event_type, version, payload)`` with per-type caches."""

    def __init__(self) -> None:
        self._plans: dict[tuple[str, int], Callable[[Any], Event]] = {}

    def decode(self, event_type: str, version: int, payload: str | bytes | dict[str, Any]) -> Event:
        return self.plan(event_type, version)(payload)

    def plan(self, event_type: str, version: int) -> Callable[[Any], Event]:
        """The decoding function for one (type, version); raises if the type or version is unusable."""
        plan = self._plans.get((event_type, version))
        if plan is None:
            plan = self._plans[(event_type, version)] = self._plan(event_type, version)
        return plan

    def _plan(self, event_type: str, version: int) -> Callable[[Any], Event]:
        cls = event_class(event_type)  # raises UnknownEventType
        if version > cls.version:
            upcast(event_type, version, {})  # raises FutureEventVersion
        fields = dataclasses.fields(cls)
        names = frozenset(field.name for field in fields)
        required = frozenset(field.name for field in fields if field.default is dataclasses.MISSING
                             and field.default_factory is dataclasses.MISSING)
        constants = {field.name: field.default for field in fields
                     if field.default is not dataclasses.MISSING}
        factories = any(field.default_factory is not dataclasses.MISSING for field in fields)
        fast = is_plain(cls) and not factories
        # Only tuple fields can legitimately hold JSON lists; others are taken as stored.
        has_tuples = any("tuple" in str(field.type) for field in fields)
        needs_upcast = version < cls.version
        new = object.__new__
        set_attribute = object.__setattr__
        width = len(names)

        def slow(data: dict[str, Any]) -> Event:
            try:
                return cls(**{key: _freeze(value) for key, value in data.items() if key in names})
            except TypeError as error:
                raise MalformedEvent(f"{event_type} payload does not fit: {error}") from None

        def plan(payload: Any) -> Event:
            try:
                data = _loads(payload) if isinstance(payload, str | bytes) else payload
            except (ValueError, UnicodeDecodeError) as error:
                raise MalformedEvent(f"{event_type} payload is not JSON: {error}") from None
            if type(data) is not dict:
                raise MalformedEvent(f"{event_type} payload is not a JSON object")
            if needs_upcast:
                data = upcast(event_type, version, data)
            if not fast or (data.keys() != names
                            and not (names.issuperset(data) and required.issubset(data))) \
                    or (has_tuples and list in map(type, data.values())):
                return slow(data)
            # Same object as cls(**data) (a test checks), without the frozen __init__'s cost:
            # the decoded dict becomes the instance's __dict__.
            event = new(cls)
            if constants and len(data) != width:
                data = {**constants, **data}
            set_attribute(event, "__dict__", data)
            return event

        return plan


def decode_metadata(text: str | bytes | dict[str, Any] | None) -> dict[str, Any]:
    if text is None:
        return {}
    if isinstance(text, dict):
        return text
    try:
        data = _loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedEvent(f"metadata is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise MalformedEvent("metadata is not a JSON object")
    return data


__all__ = ["EventError", "RowDecoder", "decode_metadata", "encode_metadata", "encode_payload"]
