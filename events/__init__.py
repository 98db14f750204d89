"""Immutable, versioned facts: the event types, their codec and the pure folds.

Importing this package registers every event type with the codec.
"""

from events import types  # noqa: F401  (registers the event types)
from events.base import (
    Event,
    EventError,
    FutureEventVersion,
    MalformedEvent,
    UnknownEventType,
    decode,
    encode,
)

__all__ = ["Event", "EventError", "FutureEventVersion", "MalformedEvent", "UnknownEventType",
           "decode", "encode"]
