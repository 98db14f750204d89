"""The node actor: the supervisor at the top, and the one address the agent talks to.

It owns the ``node:<node_id>`` stream, creates the relay monitor and one party actor
per open party, routes commands to them by party id, restarts any child that exits
(children recover by replaying their own streams), and gathers status.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
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
from actors.adapters import build_adapters
from actors.journal import StreamWriter, open_recorder
from actors.logs import logger
from actors.party import PartyActor
from actors.relay_monitor import RelayMonitorActor
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import NodeState, apply_node
from events.streams import node_stream
from mesh.interfaces import MeshError, NatDetector

STATUS = "status"
RESTART = "restart"
MONITOR = "relay-monitor"
SOFTWARE_VERSION = "0.1.0"


@dataclass
class Gather:
    reply_to: Any
    waiting: set[str]
    replies: dict[str, m.PartyStatus] = field(default_factory=dict)


class NodeActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.start: m.StartNode | None = None
        self.state = NodeState()
        self.writer: StreamWriter | None = None
        self.parties: dict[str, ActorAddress] = {}
        self.monitor: ActorAddress | None = None
        self.relay: str | None = None
        self.timers = Timers(new_incarnation())
        self.requests = itertools.count(1)
        self.gathers: dict[int, Gather] = {}
        self.stopping = False
        self.log = logger

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, m.StartNode):
            if self.start is None:
                self._start(message)
            self.send(sender, m.NodeReady(self.state.node_id, self.state.parties))
            return
        if isinstance(message, ActorExitRequest):
            self.stopping = True
            if self.start is not None:
                self._commit([ev.NodeStopped(node_id=self.state.node_id, reason="actor system shut down")])
            return
        if isinstance(message, m.Ping):
            self.send(sender, m.Pong())
            return
        if self.start is None:
            logger.warning("node actor got {} before StartNode; dropped", type(message).__name__)
            self.send(sender, m.CommandRejected(type(message).__name__, "the node is not started"))
            return
        match message:
            case m.CreateParty() | m.JoinParty():
                self._open(message, sender)
            case m.LeaveParty():
                if self._party(message, sender):
                    self.send(self.parties[message.party_id], m.Forwarded(message, sender))
            case m.PeerAnnounced() | m.PeerDeparted() | m.RemoteCandidates() | m.Observations():
                if self._party(message, None):
                    self.send(self.parties[message.party_id], message)
            case m.Forwarded(command=m.PartyClosed() as closed):
                self._closed(closed, message.reply_to)
            case m.StatusQuery():
                self._status(sender)
            case m.PartyStatusReply():
                self._status_reply(message)
            case m.RelayChanged():
                self.relay = message.relay
                for address in self.parties.values():
                    self.send(address, message)
            case m.ChildrenQuery():
                self.send(sender, m.ChildAddresses(
                    (("relay-monitor", self.monitor), *self.parties.items())))
            case WakeupMessage(payload=m.Timer() as timer):
                if timer.kind == STATUS:
                    self._status_timeout(timer.target)
                elif timer.kind == RESTART and self.timers.is_current(timer):
                    self._restart(timer.target)
            case ChildActorExited():
                self._child_exited(message.childAddress)
            case PoisonMessage():
                self.log.error("a message failed twice: {}", type(message.poisonMessage).__name__)
            case _:
                self.reject(type(message).__name__, "unknown message for the node")

    def reject(self, message_type: str, reason: str) -> None:
        self.log.warning("rejected {}: {}", message_type, reason)
        self._commit([ev.MessageRejected(actor="node", message_type=message_type, reason=reason)])

    def _commit(self, events: list[Event]) -> None:
        assert self.writer is not None
        for record in self.writer.append(events, "node"):
            self.state = apply_node(self.state, record.event)

    # ------------------------------------------------------------ start and supervision

    def _start(self, start: m.StartNode) -> None:
        logs.configure(start.log)
        self.start = start
        self.log = logger.bind(actor=f"node/{start.node_id}")
        adapters = build_adapters(start.adapters)
        self.writer = StreamWriter(open_recorder(start.store, upgrade=True), node_stream(start.node_id),
                                   self.timers.incarnation, {"node_id": start.node_id, "actor": "node"})
        self.state = self.writer.replay(apply_node, NodeState())
        self._commit([ev.NodeStarted(node_id=start.node_id, public_key=adapters.wireguard.public_key,
                                     listen_port=adapters.wireguard.listen_port,
                                     software_version=SOFTWARE_VERSION)])
        self._record_nat(adapters.nat_detector)
        self._start_monitor()
        for party_id in self.state.parties:
            self._start_party(party_id)
        self.log.info("node started with {} parties", len(self.state.parties))

    def _record_nat(self, detector: NatDetector) -> None:
        """The node's NAT as its adapters see it: one row when it changes, none per restart."""
        assert self.start is not None
        try:
            info = detector.detect()  # the real detector reuses the detection its adapters made
        except MeshError as error:
            self.log.warning("NAT detection failed: {}", error)
            info = None
        if info is None:
            if not self.state.relay_only:
                self._commit([ev.NatDetectionFailed(node_id=self.start.node_id,
                                                    reason="no STUN answer (or no STUN server configured)")])
            return
        endpoint = f"{info.public_ip}:{info.public_port}" if info.public_ip and info.public_port else None
        if (info.nat_type, endpoint, False) != (self.state.nat_type, self.state.public_endpoint,
                                                self.state.relay_only):
            self._commit([ev.NatDetected(node_id=self.start.node_id, nat_type=info.nat_type,
                                         public_ip=info.public_ip, public_port=info.public_port,
                                         local_ip=info.local_ip, local_port=info.local_port,
                                         stun_server=info.stun_server)])

    def _start_monitor(self) -> None:
        assert self.start is not None
        self.monitor = self.createActor(RelayMonitorActor)
        self.send(self.monitor, m.RelayMonitorInit(
            node_id=self.start.node_id, relays=self.start.relays, store=self.start.store,
            adapters=self.start.adapters, config=self.start.config, log=self.start.log))

    def _start_party(self, party_id: str) -> None:
        assert self.start is not None
        address = self.createActor(PartyActor)
        self.parties[party_id] = address
        self.send(address, m.PartyInit(
            node_id=self.start.node_id, party_id=party_id, store=self.start.store,
            adapters=self.start.adapters, config=self.start.config, log=self.start.log,
            relay=self.relay, local_nat_type=self.state.nat_type))

    def _child_exited(self, address: ActorAddress) -> None:
        assert self.start is not None
        if address == self.monitor:
            name = MONITOR
        else:
            name = next((p for p, a in self.parties.items() if a == address), "")
            if not name:
                return
            del self.parties[name]
        if not self.stopping:
            self.wakeupAfter(timedelta(seconds=self.start.config.restart_delay_s),
                             self.timers.arm(RESTART, target=name))

    def _restart(self, name: str) -> None:
        if self.stopping:
            return
        if name == MONITOR:
            self.log.warning("relay monitor exited; restarting it")
            self._start_monitor()
        elif name in self.state.parties and name not in self.parties:
            self.log.warning("party actor {} exited; restarting it from its stream", name)
            self._start_party(name)

    # ------------------------------------------------------------ parties

    def _party(self, message: Any, reply_to: Any) -> bool:
        party_id = getattr(message, "party_id", None)
        if isinstance(party_id, str) and party_id in self.parties:
            return True
        reason = f"no open party {party_id!r}"
        self.reject(type(message).__name__, reason)
        if reply_to is not None:
            self.send(reply_to, m.CommandRejected(type(message).__name__, reason))
        return False

    def _open(self, command: m.CreateParty | m.JoinParty, reply_to: Any) -> None:
        assert self.start is not None
        if not (isinstance(command.party_id, str) and command.party_id and ":" not in command.party_id):
            self.reject(type(command).__name__, "party id must be non-empty text without ':'")
            self.send(reply_to, m.CommandRejected(type(command).__name__, "invalid party id"))
            return
        if command.party_id in self.parties:
            self.send(reply_to, m.CommandRejected(type(command).__name__,
                                                  f"party {command.party_id} is already open"))
            return
        self._commit([ev.NodePartyOpened(node_id=self.start.node_id, party_id=command.party_id)])
        self._start_party(command.party_id)
        self.send(self.parties[command.party_id], m.Forwarded(command, reply_to))

    def _closed(self, closed: m.PartyClosed, reply_to: Any) -> None:
        assert self.start is not None
        self._commit([ev.NodePartyClosed(node_id=self.start.node_id, party_id=closed.party_id,
                                         reason=closed.reason)])
        address = self.parties.pop(closed.party_id, None)
        if address is not None:
            self.send(address, ActorExitRequest())
        self.send(reply_to, closed)

    # ------------------------------------------------------------ status

    def _status(self, reply_to: Any) -> None:
        assert self.start is not None
        request_id = next(self.requests)
        self.gathers[request_id] = Gather(reply_to, set(self.parties))
        for address in self.parties.values():
            self.send(address, m.PartyStatusQuery(request_id))
        if self.parties:
            timer = m.Timer(STATUS, request_id, self.timers.incarnation, str(request_id))
            self.wakeupAfter(timedelta(seconds=self.start.config.status_timeout_s), timer)
        self._status_done(request_id, complete=True)

    def _status_reply(self, reply: m.PartyStatusReply) -> None:
        gather = self.gathers.get(reply.request_id)
        if gather is not None:
            gather.replies[reply.status.party_id] = reply.status
            gather.waiting.discard(reply.status.party_id)
            self._status_done(reply.request_id, complete=True)

    def _status_timeout(self, target: str) -> None:
        if target.isdigit():
            self._status_done(int(target), complete=False)

    def _status_done(self, request_id: int, complete: bool) -> None:
        gather = self.gathers.get(request_id)
        if gather is None or (complete and gather.waiting):
            return
        del self.gathers[request_id]
        parties = tuple(gather.replies[p] for p in sorted(gather.replies))
        self.send(gather.reply_to, m.NodeStatus(self.state.node_id, self.relay, parties,
                                                complete=not gather.waiting))
