"""The edge: the one actor that performs effects, so no other actor ever blocks.

Actors send it an ``actors.effects.Effect`` and get an ``EffectDone`` back. How it runs
them is the ``executor`` named in ``EdgeInit``:

- ``INLINE``: at once, inside the edge actor (deterministic tests with simulated
  adapters, which never block);
- the name of an ``IoWorkers`` registered in this process (the agent's runtime): the
  effect runs on a worker thread and the answer comes back into the actor system
  through the runtime's inbox. Effects with the same ``serial_key`` (one WireGuard
  peer) run one after another in order; everything else runs in parallel, so sixteen
  punches take the time of one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from thespian.actors import Actor, ActorAddress, ActorExitRequest, PoisonMessage

from actors import logs
from actors import messages as m
from actors.adapters import build_adapters
from actors.effects import Effect, EffectDone, perform
from actors.logs import logger

INLINE = "inline"

Deliver = Callable[[ActorAddress, Any], None]


class IoWorkers:
    """Threads that run effects and hand the answers to ``deliver`` (thread-safe)."""

    # A punch holds its worker for up to the punch timeout: enough workers that a
    # whole party's punches, probes and relay probes never queue behind each other.
    MAX_WORKERS = 64

    def __init__(self, deliver: Deliver, max_workers: int = MAX_WORKERS) -> None:
        self._deliver = deliver
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lanrage-io")
        self._lock = threading.Lock()
        self._serial: dict[str, deque[tuple[Any, Effect, ActorAddress]]] = {}
        self._closed = False

    def submit(self, adapters: Any, effect: Effect, reply_to: ActorAddress) -> None:
        key = effect.serial_key
        with self._lock:
            if self._closed:
                return
            if key is not None:
                queue = self._serial.setdefault(key, deque())
                queue.append((adapters, effect, reply_to))
                if len(queue) > 1:
                    return  # the worker running the head of this queue runs it next
        self._pool.submit(self._run, adapters, effect, reply_to)

    def _run(self, adapters: Any, effect: Effect, reply_to: ActorAddress) -> None:
        while True:
            self._deliver(reply_to, perform(adapters, effect))
            key = effect.serial_key
            if key is None:
                return
            with self._lock:
                queue = self._serial[key]
                queue.popleft()
                if not queue or self._closed:
                    self._serial.pop(key, None)
                    return
                adapters, effect, reply_to = queue[0]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


_workers: dict[str, IoWorkers] = {}


def register_workers(name: str, workers: IoWorkers) -> None:
    _workers[name] = workers


def unregister_workers(name: str) -> None:
    _workers.pop(name, None)


class EdgeActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init: m.EdgeInit | None = None
        self.adapters: Any = None
        self.workers: IoWorkers | None = None

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ActorExitRequest):
            return
        if isinstance(message, m.EdgeInit):
            if self.init is None:
                logs.configure(message.log)
                self.init = message
                self.adapters = build_adapters(message.adapters)
                if message.executor != INLINE:
                    self.workers = _workers[message.executor]
            return
        if isinstance(message, PoisonMessage):
            logger.error("edge: a message failed twice: {}", type(message.poisonMessage).__name__)
            return
        if not isinstance(message, Effect):
            logger.warning("edge: dropped {}, not an effect", type(message).__name__)
            return
        if self.init is None:
            self.send(sender, EffectDone(message, error="the edge is not started"))
        elif self.workers is None:
            self.send(sender, perform(self.adapters, message))
        else:
            self.workers.submit(self.adapters, message, sender)
