"""The peer-connection actor: one thespian actor hosting one PeerConnection."""

from __future__ import annotations

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
            if self.connection is None:
                logs.configure(message.log)
                self.parent = sender
                self.connection = PeerConnection(message, self)
                self.connection.start()
            return
        if self.connection is None:
            logger.warning("peer-connection actor got {} before PeerInit; dropped", type(message).__name__)
            return
        if isinstance(message, WakeupMessage):
            if isinstance(message.payload, m.Timer):
                self.connection.handle(message.payload)
            return
        if isinstance(message, PoisonMessage):
            self.connection.log.error("a message failed twice: {}", type(message.poisonMessage).__name__)
            return
        self.connection.handle(message)
