"""Generation tokens for wakeupAfter, which cannot be cancelled."""

from __future__ import annotations

import uuid

from actors.messages import Timer


def new_incarnation() -> str:
    return uuid.uuid4().hex[:12]


class Timers:
    def __init__(self, incarnation: str, target: str = "") -> None:
        self.incarnation = incarnation
        self.target = target
        self._generations: dict[str, int] = {}

    def arm(self, kind: str, target: str | None = None) -> Timer:
        """A new token for ``kind`` (per target); every older one of that kind becomes stale."""
        key = kind if target is None else f"{kind}/{target}"
        generation = self._generations.get(key, 0) + 1
        self._generations[key] = generation
        return Timer(kind, generation, self.incarnation, self.target if target is None else target)

    def cancel(self, kind: str) -> None:
        self._generations[kind] = self._generations.get(kind, 0) + 1

    def is_current(self, timer: Timer) -> bool:
        key = timer.kind if timer.target == self.target else f"{timer.kind}/{timer.target}"
        return (timer.incarnation == self.incarnation
                and self._generations.get(key) == timer.generation)
