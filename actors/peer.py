"""The peer-connection actor: one thespian actor hosting one PeerConnection.

Crash policy (the same as inline hosting in actors/party.py): an exception while
handling a message is logged and the connection is rebuilt from its stream (replay
plus WireGuard reconcile), instead of letting thespian retry a message whose
events may already be stored. A process that dies is recreated by the party.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from thespian.actors import (
    Actor,
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

from actors import logs
from actors import messages as m
from actors.connection import PeerConnection
from actors.logs import logger


class PeerConnectionActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init: m.PeerInit | None = None
        self.connection: PeerConnection | None = None
        self.parent: ActorAddress | None = None

    # ConnectionHost
    def schedule(self, delay_s: float, timer: m.Timer) -> None:
        self.wakeupAfter(timedelta(seconds=delay_s), timer)

    def notify_parent(self, message: Any) -> None:
        if self.parent is not None:
            self.send(self.parent, message)

    def finished(self) -> None:
        self.send(self.myAddress, ActorExitRequest())

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ActorExitRequest | ChildActorExited):
            return
        if isinstance(message, m.PeerInit):
            if self.init is None:
                logs.configure(message.log)
                self.init, self.parent = message, sender
                self._rebuild()
            return
        if self.connection is None:
            logger.warning("peer-connection actor got {} before PeerInit; dropped", type(message).__name__)
            return
        if isinstance(message, WakeupMessage):
            if isinstance(message.payload, m.Timer):
                self._guard(lambda c: c.handle(message.payload))
            return
        if isinstance(message, PoisonMessage):
            self.connection.log.error("a message failed twice: {}", type(message.poisonMessage).__name__)
            return
        self._guard(lambda c: c.handle(message))

    def _rebuild(self) -> None:
        assert self.init is not None
        connection = PeerConnection(self.init, self)
        connection.start()  # raises to thespian (retry, then PoisonMessage) if even replay fails
        self.connection = connection

    def _guard(self, call: Callable[[PeerConnection], None]) -> None:
        assert self.connection is not None
        try:
            call(self.connection)
        except Exception:
            self.connection.log.exception("peer connection crashed; rebuilding it from its stream")
            self._rebuild()
