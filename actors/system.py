"""Starting an actor system and the node actor.

LANrage runs thespian's ``simpleSystemBase`` only: one process, no sockets, no
pickled bytes from anywhere (thespian's TCP base listens on every interface and
unpickles what arrives: anyone who reaches it runs code as the agent). The agent
drives it from one thread (``actors.runtime.ActorRuntime``); tests drive it
directly, with a virtual clock and the edge running effects inline.
"""

from __future__ import annotations

import math
import os
from typing import Any

from thespian.actors import ActorAddress, ActorSystem
from thespian.system import simpleSystemBase
from thespian.system.timing import ExpirationTimer

from actors import messages as m
from actors.node import NodeActor

BASE = "simpleSystemBase"


class NodeStartError(RuntimeError):
    pass


def _deadline(wakeup: Any) -> float:
    due = wakeup[1]._time_to_quit
    return math.inf if due is None else float(due)


def _pop_expired_wakeups(self: Any, now: float) -> list[Any]:
    """The wakeups due at ``now``, in the order they were added; the rest stay."""
    wakeups = self._wakeUps
    if not wakeups or getattr(self, "_earliest", -math.inf) > now:
        return []
    due = [wakeup for wakeup in wakeups if _deadline(wakeup) <= now]
    if due:
        self._wakeUps = [wakeup for wakeup in wakeups if _deadline(wakeup) > now]
    self._earliest = min(map(_deadline, self._wakeUps), default=math.inf)
    return due


def _add_wakeup(self: Any, from_actor: Any, time_period: Any, payload: Any) -> None:
    self._wakeUps.append((from_actor, ExpirationTimer(time_period), payload))
    self._earliest = min(getattr(self, "_earliest", -math.inf), _deadline(self._wakeUps[-1]))


def _next_wakeup(self: Any) -> Any:
    """The timer of the wakeup due first, or None."""
    return min(self._wakeUps, key=_deadline)[1] if self._wakeUps else None


def fast_wakeups() -> None:
    """The simple base's wakeup list, scanned with plain comparisons.

    thespian 4.0.1 looks for due wakeups before every message it delivers, through a
    fold of lambdas that builds a timer view per pending wakeup (~2 us each). A node
    with 16 peers keeps about 50 wakeups pending (``wakeupAfter`` cannot be cancelled:
    re-armed timers wait out their time), so that scan was a third of the actor
    thread's CPU when idle. Same result (due at or after the deadline, order kept),
    and when nothing is due (most deliveries) one comparison with the earliest deadline.
    """
    manager = simpleSystemBase.WakeupManager
    manager._add_wakeup = _add_wakeup  # type: ignore[method-assign]
    manager._pop_expired_wakeups = _pop_expired_wakeups  # type: ignore[method-assign]
    manager._next_wakeup = _next_wakeup  # type: ignore[method-assign]


def start_system(log_defs: Any = None) -> ActorSystem:
    """A new one-process actor system; shut it down in ``finally``.

    ``THESPIAN_BASE_IPADDR`` defaults to 127.0.0.1 so thespian never probes the internet.
    """
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    fast_wakeups()
    return ActorSystem(BASE, {}, logDefs=log_defs, transientUnique=True)


def start_node(system: ActorSystem, start: m.StartNode, timeout_s: float = 30.0) -> ActorAddress:
    """Create the node actor, send it StartNode and wait for NodeReady (tests: inline edge)."""
    node = system.createActor(NodeActor)
    reply = system.ask(node, start, timeout_s)
    if not isinstance(reply, m.NodeReady):
        raise NodeStartError(f"node {start.node_id} did not start: {reply!r}")
    return node
