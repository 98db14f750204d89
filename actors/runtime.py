"""The agent's actor runtime: the one-process actor system, driven by one thread.

``simpleSystemBase`` runs every actor synchronously inside ``tell``/``ask``, fires
``wakeupAfter`` timers only while it runs, and is not thread-safe. So one thread owns
it and loops: take the next item from a thread-safe inbox (a tell from the agent, an
ask, an effect's answer from an I/O worker) and run it, or, when the inbox stays quiet
until the next timer is due, pump the system so that it fires.

An ask never blocks that thread: a short-lived ``Asker`` actor sends the question and
resolves a ``concurrent.futures.Future`` when the answer (or its timeout) arrives, so
actors may answer after their effects complete.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from thespian.actors import Actor, ActorAddress, ActorExitRequest, ActorSystem, WakeupMessage
from thespian.system.timing import timePeriodSeconds

from actors import messages as m
from actors import profiling
from actors.edge import IoWorkers, register_workers, unregister_workers
from actors.logs import logger
from actors.node import NodeActor
from actors.system import NodeStartError, start_system

# The runtime sleeps until the next timer is due, but never longer than this: a safety
# net should a timer be added outside the runtime's view.
MAX_IDLE_S = 1.0

_futures: dict[int, Future[Any]] = {}
_futures_lock = threading.Lock()


def _resolve(request_id: int, answer: Any) -> None:
    with _futures_lock:
        future = _futures.pop(request_id, None)
    if future is not None and not future.done():
        future.set_result(answer)


@dataclass(frozen=True)
class AskRequest:
    request_id: int
    target: Any
    message: Any
    timeout_s: float


class Asker(Actor):
    """Asks one question on behalf of a thread outside the system; the first answer wins."""

    def __init__(self) -> None:
        super().__init__()
        self.request_id: int | None = None

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ActorExitRequest):
            return
        if isinstance(message, AskRequest):
            if self.request_id is None:
                self.request_id = message.request_id
                self.wakeupAfter(timedelta(seconds=message.timeout_s), "timeout")
                self.send(message.target, message.message)
            return
        if self.request_id is None:
            return
        _resolve(self.request_id, None if isinstance(message, WakeupMessage) else message)
        self.request_id = None
        self.send(self.myAddress, ActorExitRequest())


class Pump(Actor):
    """The target of idle ticks: a tell runs the system, which fires due timers."""

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        pass


class ActorRuntime:
    """The actor system, its thread, and the I/O workers of the edge."""

    def __init__(self, name: str = "lanrage") -> None:
        self.name = name
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="lanrage-actors", daemon=True)
        self._started = threading.Event()
        self._stopped = False
        self.system: ActorSystem | None = None
        self.node: ActorAddress | None = None
        self._pump: ActorAddress | None = None
        self.error: BaseException | None = None
        self.workers = IoWorkers(self.tell)
        register_workers(name, self.workers)

    # ------------------------------------------------------------ thread

    def start(self, log_defs: Any = None) -> None:
        self._log_defs = log_defs
        self._thread.start()
        self._started.wait()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self.system = start_system(self._log_defs)
            self._pump = self.system.createActor(Pump)
        except BaseException as error:
            self.error = error
            self._started.set()
            return
        self._started.set()
        profiler = profiling.ActorThreadProfile.start()
        while True:
            if profiler is not None:
                profiler.maybe_write()
            try:
                item = self._inbox.get(timeout=self._until_next_timer())
            except queue.Empty:
                self.system.tell(self._pump, None)  # a tell runs the system: due timers fire
                continue
            if item is None:
                if self.node is not None:  # a clean stop: the node records NodeStopped
                    self.system.tell(self.node, ActorExitRequest())
                break
            try:
                item()
            except Exception as error:  # one bad call must not stop the actors
                logger.exception("actor runtime: {} failed: {}", item, error)
        try:
            self.system.shutdown()
        finally:
            self._stopped = True

    def _until_next_timer(self) -> float:
        # thespian keeps the simple base's timers privately (4.0.1 pinned): read the next one.
        next_wakeup = getattr(getattr(self.system, "_systemBase", None), "_next_wakeup", None)
        timer = next_wakeup() if next_wakeup is not None else None
        if timer is None:
            return MAX_IDLE_S
        return min(MAX_IDLE_S, max(0.0, timePeriodSeconds(timer.view().remaining())))

    def _call(self, function: Callable[[], None]) -> None:
        if not self._stopped:
            self._inbox.put(function)

    # ------------------------------------------------------------ API (any thread)

    def tell(self, target: ActorAddress, message: Any) -> None:
        self._call(lambda: self.system.tell(target, message))  # type: ignore[union-attr]

    def ask(self, target: ActorAddress, message: Any, timeout_s: float) -> Future[Any]:
        """A future that resolves to the answer, or None when none came within ``timeout_s``."""
        future: Future[Any] = Future()
        request_id = next(self._ids)
        with _futures_lock:
            _futures[request_id] = future

        def run() -> None:
            assert self.system is not None
            asker = self.system.createActor(Asker)
            self.system.tell(asker, AskRequest(request_id, target, message, timeout_s))

        self._call(run)
        return future

    def create(self, actor_class: type[Actor]) -> ActorAddress:
        future: Future[ActorAddress] = Future()
        self._call(lambda: future.set_result(self.system.createActor(actor_class)))  # type: ignore[union-attr]
        return future.result(timeout=30)

    def start_node(self, start: m.StartNode, timeout_s: float = 60.0) -> ActorAddress:
        """Create the node actor and wait for NodeReady; its address."""
        node = self.create(NodeActor)
        reply = self.ask(node, start, timeout_s).result(timeout=timeout_s + 5)
        if not isinstance(reply, m.NodeReady):
            raise NodeStartError(f"node {start.node_id} did not start: {reply!r}")
        self.node = node
        return node

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop every actor (the node records NodeStopped), then the I/O workers."""
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout_s)
        self.workers.close()
        unregister_workers(self.name)
