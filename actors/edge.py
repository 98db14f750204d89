"""The edge: the one actor that performs effects, so no other actor ever blocks.

Actors send it an ``actors.effects.Effect`` and get an ``EffectDone`` back. How it runs
them is the ``executor`` named in ``EdgeInit``:

- ``INLINE``: at once, inside the edge actor (deterministic tests with simulated
  adapters, which never block);
- the name of an ``IoWorkers`` registered in this process (the agent's runtime): the
  effect runs on a worker thread and the answer comes back into the actor system
  through the runtime's inbox. Effects with the same ``serial_key`` (one WireGuard
  peer) run one after another in order; everything else runs in parallel, so sixteen
  punches take the time of one. Counter readings (``ReadPeerStats``) share reads: the
  connections' readings fall on a common beat, and the requests of one beat are
  answered from one read of the whole interface, asked for after they all arrived
  (requests that arrive while it runs wait for the next). Sixteen peers cost one
  worker task a beat, not sixteen.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from thespian.actors import Actor, ActorAddress, ActorExitRequest, PoisonMessage

from actors import logs, profiling
from actors import messages as m
from actors.adapters import build_adapters
from actors.effects import Effect, EffectDone, ReadAllPeerStats, ReadPeerStats, perform
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
        if profiling.enabled:
            profiling.effects[type(effect).__name__] += 1
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
            if profiling.enabled:
                started = time.thread_time()
                done = perform(adapters, effect)
                profiling.effect_cpu_s[type(effect).__name__] += time.thread_time() - started
                self._deliver(reply_to, done)
            else:
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


class _ReadNow:
    """The edge to itself: the requests of this beat are in; read the counters once."""


class EdgeActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init: m.EdgeInit | None = None
        self.adapters: Any = None
        self.workers: IoWorkers | None = None
        # Counter readings: the batch a worker's read answers, the requests for the next one.
        self.stats_reading = False
        self.stats_flushing = False  # a _ReadNow is queued
        self.stats_batch: list[tuple[ReadPeerStats, ActorAddress]] = []
        self.stats_waiting: list[tuple[ReadPeerStats, ActorAddress]] = []

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
        if isinstance(message, EffectDone) and isinstance(message.effect, ReadAllPeerStats):
            self._answer_readings(message)
            return
        if isinstance(message, _ReadNow):
            self._read_now()
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
        elif isinstance(message, ReadPeerStats):
            self.stats_waiting.append((message, sender))
            self._read_stats()
        else:
            self.workers.submit(self.adapters, message, sender)

    def _read_stats(self) -> None:
        """After the messages already queued (the rest of the beat's requests): one read for all."""
        if not self.stats_flushing and not self.stats_reading and self.stats_waiting:
            self.stats_flushing = True
            self.send(self.myAddress, _ReadNow())

    def _read_now(self) -> None:
        self.stats_flushing = False
        if self.stats_reading or not self.stats_waiting or self.workers is None:
            return
        self.stats_reading = True
        self.stats_batch, self.stats_waiting = self.stats_waiting, []
        self.workers.submit(self.adapters, ReadAllPeerStats(tag="readings"), self.myAddress)

    def _answer_readings(self, done: EffectDone) -> None:
        """The read the batch asked for: each request gets its peer's figures."""
        self.stats_reading = False
        batch, self.stats_batch = self.stats_batch, []
        for effect, requester in batch:
            if done.ok:
                self.send(requester, EffectDone(effect, done.value.get(effect.public_key)))
            else:
                self.send(requester, EffectDone(effect, error=done.error))
        self._read_stats()
