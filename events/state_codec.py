"""A JSON codec for the fold states, and the version that ties a stored state to the fold code.

Snapshots keep a fold's state as JSON beside the events. The codec is generic over
the frozen state dataclasses of ``events.fold``: nested dataclasses, tuples (fixed or
``tuple[X, ...]``), dicts with string keys, ``X | None`` and JSON scalars. Decoding
is driven by the dataclass's type hints, never by names stored in the JSON, so a
snapshot cannot make the decoder build anything but the declared state types.

``fold_version`` hashes the source of the modules whose code decides what a fold
returns (the folds, the event types, this codec) with the fold's name and its
initial state: a snapshot written by other code, or for another start, is stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

S = TypeVar("S")

# A state deeper than this is not one of ours: a hostile or broken snapshot, refused.
MAX_DEPTH = 16


class StateDecodeError(ValueError):
    """Stored state JSON that does not fit the state type it is read as."""


def encode_state(state: Any) -> str:
    """The state as compact JSON (tuples as arrays, dataclasses as objects of their fields)."""
    return json.dumps(_plain(state, 0), separators=(",", ":"), allow_nan=False)


def _plain(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise TypeError("state nested too deeply to encode")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name), depth + 1)
                for field in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("only dicts with string keys can be encoded")
        return {key: _plain(item, depth + 1) for key, item in value.items()}
    raise TypeError(f"{type(value).__name__} is not a state value")


def decode_state(cls: type[S], text: str | bytes) -> S:
    """Rebuild a ``cls`` from ``encode_state``'s JSON; StateDecodeError if it does not fit."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise StateDecodeError(f"state is not JSON: {error}") from None
    return typing.cast(S, _build(cls, data, 0))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(kind: Any, value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise StateDecodeError("state nested too deeply")
    origin = typing.get_origin(kind)
    if kind is Any:
        raise StateDecodeError("a state field typed Any cannot be decoded safely")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _build(option, value, depth + 1)
            except StateDecodeError as error:
                errors.append(str(error))
        raise StateDecodeError("; ".join(errors) or f"{value!r} fits no type of {kind}")
    if origin is tuple:
        arguments = typing.get_args(kind)
        if not isinstance(value, list):
            raise StateDecodeError(f"expected an array for {kind}, got {type(value).__name__}")
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_build(arguments[0], item, depth + 1) for item in value)
        if len(arguments) != len(value):
            raise StateDecodeError(f"expected {len(arguments)} items for {kind}, got {len(value)}")
        return tuple(_build(argument, item, depth + 1)
                     for argument, item in zip(arguments, value, strict=True))
    if origin is dict:
        key_type, value_type = typing.get_args(kind)
        if key_type is not str or not isinstance(value, dict):
            raise StateDecodeError(f"expected an object for {kind}")
        return {key: _build(value_type, item, depth + 1) for key, item in value.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise StateDecodeError(f"expected an object for {kind.__name__}")
        hints = _hints(kind)
        names = {field.name for field in dataclasses.fields(kind) if field.init}
        unknown = set(value) - names
        if unknown:
            raise StateDecodeError(f"{kind.__name__} has no field {sorted(unknown)[0]!r}")
        arguments = {name: _build(hints[name], item, depth + 1) for name, item in value.items()}
        try:
            return kind(**arguments)
        except TypeError as error:
            raise StateDecodeError(f"{kind.__name__}: {error}") from None
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise StateDecodeError(f"expected a number, got {type(value).__name__}")
    if kind in (bool, int, str):
        if type(value) is kind:
            return value
        raise StateDecodeError(f"expected {kind.__name__}, got {type(value).__name__}")
    if kind is type(None):
        if value is None:
            return None
        raise StateDecodeError(f"expected null, got {type(value).__name__}")
    raise StateDecodeError(f"{kind!r} is not a state type this codec knows")


# The modules whose code decides what a fold returns for a given log.
_FOLD_MODULES = ("events.fold", "events.types", "events.base", "events.state_codec")


@cache
def _code_hash() -> str:
    digest = hashlib.sha256()
    for name in _FOLD_MODULES:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def fold_version(apply: Callable[..., Any], initial: Any) -> str | None:
    """The version a snapshot of ``apply``'s fold from ``initial`` is stored under.

    None for a function that is not one of the module-level folds of ``events.fold``
    (a closure with side effects of its own must see every event: no snapshot).
    """
    module = getattr(apply, "__module__", None)
    name = getattr(apply, "__qualname__", "")
    if module != "events.fold" or "<" in name or not name.startswith("apply_"):
        return None
    start = hashlib.sha256(encode_state(initial).encode()).hexdigest()[:8]
    return f"{name}:{_code_hash()}:{start}"
