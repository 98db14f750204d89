"""The party actor: membership and virtual IPs (IPAM) as events, one peer-connection actor per remote peer.

The node writes a party's first events (created or joined, the local member and its
address) in one transaction with its own ``NodePartyOpened``, then creates this actor,
which replays its stream. It puts the local address on the interface through the edge
(outcome ``LocalAddressAssigned`` or ``LocalAddressFailed``) and answers the command
that opened it only then. Members that the control plane announces become
``PeerJoined`` + ``VirtualIpAllocated``; what a member says about itself later is
``PeerUpdated``. Each remote member has a child ``PeerConnectionActor``, recreated from
its stream if it exits unexpectedly.
"""

from __future__ import annotations

from dataclasses import replace
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

from actors import effects as fx
from actors import logs
from actors import messages as m
from actors.connection import PeerConnectionActor
from actors.journal import StreamWriter, open_recorder
from actors.logs import logger
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import ConnectionState, PartyState, apply_party
from events.streams import party_stream
from mesh import ipam
from mesh.interfaces import MeshError

RESTART = "restart"


class PartyActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init: m.PartyInit | None = None
        self.state = PartyState()
        self.writer: StreamWriter | None = None
        self.children: dict[str, ActorAddress] = {}
        self.connections: dict[str, ConnectionState] = {}  # status cache, pushed by the connections
        self.relay: str | None = None  # the node's selected relay (derived, from the node)
        self.closing: tuple[set[str], Any, str] | None = None  # (pending peers, reply_to, reason)
        self.opening: list[Any] = []  # who waits for the local address before PartyOpened
        self.log = logger
        self.parent: ActorAddress | None = None
        self.stopping = False
        self.timers = Timers(new_incarnation())

    # ------------------------------------------------------------ dispatch

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, ActorExitRequest):
            self.stopping = True
            return
        if isinstance(message, m.PartyInit):
            if self.init is None:
                self.parent = sender
                self._start(message)
            return
        if self.init is None:
            logger.warning("party actor got {} before PartyInit; dropped", type(message).__name__)
            return
        match message:
            case m.Forwarded(command=m.CreateParty() | m.JoinParty()):
                self._await_open(message.reply_to)
            case m.Forwarded(command=m.LeaveParty() as command):
                self._leave(command, message.reply_to)
            case fx.EffectDone(effect=fx.AssignLocalAddress()):
                self._address_assigned(message)
            case m.PeerAnnounced():
                self._announced(message)
            case m.RemoteCandidates():
                self._candidates(message)
            case m.PeerDeparted():
                self._departed(message)
            case m.Observations() | m.PeerAskedForRelay():
                self._to_peer(message.peer_id, message)
            case m.ConnectionUpdate():
                self.connections[message.peer_id] = message.state
            case m.PeerClosed():
                self._peer_closed(message.peer_id)
            case m.RelayQuality() | m.RelaysReachable():
                for address in self.children.values():
                    self.send(address, message)
            case m.RelayChanged():
                self.relay = message.relay
                for address in self.children.values():
                    self.send(address, message)
            case m.PartyStatusQuery():
                self.send(sender, m.PartyStatusReply(message.request_id, self.status()))
            case m.ChildrenQuery():
                self.send(sender, m.ChildAddresses(tuple(self.children.items())))
            case WakeupMessage(payload=m.Timer(kind="restart") as timer):
                if self.timers.is_current(timer) and not self.stopping:
                    self._respawn(timer.target)
            case WakeupMessage():
                pass
            case ChildActorExited():
                self._child_exited(message.childAddress)
            case PoisonMessage():
                self.log.error("a message failed twice: {}", type(message.poisonMessage).__name__)
            case _:
                self.reject(type(message).__name__, "unknown message for a party")

    def reject(self, message_type: str, reason: str) -> None:
        assert self.init is not None
        self.log.warning("rejected {}: {}", message_type, reason)
        self._commit([ev.MessageRejected(actor=f"party/{self.init.party_id}",
                                         message_type=message_type, reason=reason)], "reject")

    # ------------------------------------------------------------ persist, apply

    def _start(self, init: m.PartyInit) -> None:
        logs.configure(init.log)
        self.init = init
        self.log = logger.bind(actor=f"party/{init.party_id}")
        self.relay = init.relay
        self.writer = StreamWriter(open_recorder(init.store), party_stream(init.node_id, init.party_id),
                                   new_incarnation(),
                                   {"node_id": init.node_id, "actor": f"party/{init.party_id}"})
        self.state = self.writer.replay(apply_party, PartyState())
        if init.restarted and self.writer.position:
            self._commit([ev.ActorRestarted(actor=f"party/{init.party_id}", reason=init.restarted)],
                         "start")
        if self.state.active:
            self.log.info("party with {} members", len(self.state.members))
            local_ip = self.state.allocations.get(self.state.local_peer_id)
            if local_ip:
                self.send(init.edge, fx.AssignLocalAddress(tag="open", virtual_ip=local_ip))
            for peer_id in self.state.members_by_id:
                self._spawn(peer_id)

    def _commit(self, events: list[Event], causation: str) -> None:
        assert self.writer is not None
        for record in self.writer.append(events, causation):
            self.state = apply_party(self.state, record.event)

    # ------------------------------------------------------------ opening and leaving

    def _await_open(self, reply_to: Any) -> None:
        if self.state.local_address is not None or self.state.local_address_error is not None:
            self._answer_open(reply_to)
        else:
            self.opening.append(reply_to)

    def _address_assigned(self, done: fx.EffectDone) -> None:
        effect = done.effect
        assert isinstance(effect, fx.AssignLocalAddress)
        if done.ok:
            if self.state.local_address != effect.virtual_ip or self.state.local_address_error:
                self._commit([ev.LocalAddressAssigned(party_id=self.state.party_id,
                                                      virtual_ip=effect.virtual_ip,
                                                      interface=str(done.value or ""))], "interface")
        else:
            self.log.error("cannot put {} on the interface: {}", effect.virtual_ip, done.error)
            if self.state.local_address_error != done.error:
                self._commit([ev.LocalAddressFailed(party_id=self.state.party_id,
                                                    virtual_ip=effect.virtual_ip, error=done.error or "")],
                             "interface")
        waiting, self.opening = self.opening, []
        for reply_to in waiting:
            self._answer_open(reply_to)

    def _answer_open(self, reply_to: Any) -> None:
        if self.state.local_address_error is not None and self.state.local_address is None:
            self.send(reply_to, m.CommandRejected(
                "OpenParty", f"cannot set up WireGuard: {self.state.local_address_error}"))
            return
        virtual_ip = self.state.allocations.get(self.state.local_peer_id, "")
        self.send(reply_to, m.PartyOpened(self.state.party_id, self.state.local_peer_id, virtual_ip))

    def _leave(self, command: m.LeaveParty, reply_to: Any) -> None:
        if not self.state.active:
            self.send(reply_to, m.CommandRejected("LeaveParty", f"party {command.party_id} is not open"))
            return
        events: list[Event] = []
        for peer_id, member in self.state.members:
            if member.virtual_ip:
                events.append(ev.VirtualIpReleased(party_id=self.state.party_id, peer_id=peer_id,
                                                   virtual_ip=member.virtual_ip))
            events.append(ev.PeerLeft(party_id=self.state.party_id, peer_id=peer_id,
                                      reason="the local node left the party"))
        events.append(ev.PartyLeft(party_id=self.state.party_id, reason=command.reason))
        orphans = self._orphans()
        self._commit(events, "LeaveParty")
        self.closing = (set(self.children) | set(orphans), reply_to, command.reason)
        for address in self.children.values():
            self.send(address, m.ClosePeer("the local node left the party"))
        for peer_id, init in orphans.items():
            self._host(peer_id, init, close_reason="the local node left the party")
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self.closing is not None and not self.closing[0]:
            _, reply_to, reason = self.closing
            self.closing = None
            self.send(self.parent, m.Forwarded(m.PartyClosed(self.state.party_id, reason), reply_to))

    # ------------------------------------------------------------ members

    def _announced(self, message: m.PeerAnnounced) -> None:
        name = type(message).__name__
        if not self.state.active:
            self.reject(name, f"party {message.party_id} is not open")
            return
        if message.peer_id == self.state.local_peer_id:
            return  # the control plane echoing ourselves
        if not (isinstance(message.public_key, str) and message.public_key
                and isinstance(message.peer_id, str) and message.peer_id):
            self.reject(name, "peer id and public key are required")
            return
        candidates = tuple(message.candidates)
        member = self.state.members_by_id.get(message.peer_id)
        if member is not None:
            said = (message.name, message.nat_type, candidates or member.candidates)
            if said != (member.name, member.nat_type, member.candidates):
                self._commit([ev.PeerUpdated(party_id=self.state.party_id, peer_id=message.peer_id,
                                             name=said[0], nat_type=said[1], candidates=said[2])], name)
            self._to_peer(message.peer_id, message)
            return
        try:
            virtual_ip = ipam.choose(self.state, message.peer_id, message.virtual_ip)
        except MeshError as error:
            self.reject(name, str(error))
            return
        self._commit([
            ev.PeerJoined(party_id=self.state.party_id, peer_id=message.peer_id, name=message.name,
                          public_key=message.public_key, nat_type=message.nat_type, candidates=candidates),
            ev.VirtualIpAllocated(party_id=self.state.party_id, peer_id=message.peer_id,
                                  virtual_ip=virtual_ip)], name)
        self._spawn(message.peer_id)

    def _candidates(self, message: m.RemoteCandidates) -> None:
        member = self.state.members_by_id.get(message.peer_id)
        if member is None or member.is_local:
            self.reject(type(message).__name__, f"no remote peer {message.peer_id!r} in this party")
            return
        candidates = tuple(message.candidates)
        if candidates != member.candidates:
            self._commit([ev.PeerUpdated(party_id=self.state.party_id, peer_id=member.peer_id,
                                         name=member.name, nat_type=member.nat_type,
                                         candidates=candidates)], "RemoteCandidates")
        self._to_peer(message.peer_id, message)

    def _departed(self, message: m.PeerDeparted) -> None:
        member = self.state.members_by_id.get(message.peer_id)
        if member is None or member.is_local:
            self.reject(type(message).__name__, f"no remote peer {message.peer_id!r} in this party")
            return
        events: list[Event] = []
        if member.virtual_ip:
            events.append(ev.VirtualIpReleased(party_id=self.state.party_id, peer_id=member.peer_id,
                                               virtual_ip=member.virtual_ip))
        events.append(ev.PeerLeft(party_id=self.state.party_id, peer_id=member.peer_id,
                                  reason=message.reason))
        orphan = self._orphans().get(member.peer_id)
        self._commit(events, "PeerDeparted")
        if orphan is not None:
            self._host(member.peer_id, orphan, close_reason=message.reason)
        elif member.peer_id in self.children:
            self.send(self.children[member.peer_id], m.ClosePeer(message.reason))

    # ------------------------------------------------------------ peer connections

    def _peer_init(self, peer_id: str, member: Any = None) -> m.PeerInit:
        assert self.init is not None
        member = member or self.state.members_by_id[peer_id]
        return m.PeerInit(
            node_id=self.init.node_id, party_id=self.state.party_id, peer_id=peer_id,
            local_peer_id=self.state.local_peer_id, public_key=member.public_key,
            virtual_ip=member.virtual_ip or "", candidates=member.candidates,
            store=self.init.store, edge=self.init.edge, config=self.init.config,
            log=self.init.log, relay=self.relay, local_nat_type=self.init.local_nat_type,
            remote_nat_type=member.nat_type, local_candidates=self.init.local_candidates)

    def _orphans(self) -> dict[str, m.PeerInit]:
        """Remote members whose connection actor is not running (exited, awaiting its restart)."""
        return {peer_id: self._peer_init(peer_id, member) for peer_id, member in self.state.members
                if not member.is_local and peer_id not in self.children}

    def _spawn(self, peer_id: str, restarted: str | None = None) -> None:
        member = self.state.members_by_id[peer_id]
        if not member.is_local:
            init = self._peer_init(peer_id, member)
            self._host(peer_id, replace(init, restarted=restarted))

    def _host(self, peer_id: str, init: m.PeerInit, close_reason: str | None = None) -> None:
        if close_reason is not None:
            init = replace(init, close_reason=close_reason)
        address = self.createActor(PeerConnectionActor)
        self.children[peer_id] = address
        self.send(address, init)

    def _to_peer(self, peer_id: str, message: Any) -> None:
        if peer_id in self.children:
            self.send(self.children[peer_id], message)
        else:
            self.reject(type(message).__name__, f"no peer connection {peer_id!r} in this party")

    def _peer_closed(self, peer_id: str) -> None:
        self.children.pop(peer_id, None)
        if self.closing is not None:
            self.closing[0].discard(peer_id)
            self._maybe_closed()

    def _child_exited(self, address: ActorAddress) -> None:
        peer_id = next((p for p, a in self.children.items() if a == address), None)
        if peer_id is None:
            return
        del self.children[peer_id]
        if self.closing is not None:
            self.closing[0].discard(peer_id)
            self._maybe_closed()
        elif not self.stopping:
            assert self.init is not None
            self.wakeupAfter(timedelta(seconds=self.init.config.restart_delay_s),
                             self.timers.arm(RESTART, target=peer_id))

    def _respawn(self, peer_id: str) -> None:
        if self.state.active and peer_id in self.state.members_by_id and peer_id not in self.children:
            self.log.warning("peer connection {} exited; restarting it from its stream", peer_id)
            self._spawn(peer_id, restarted="the actor exited unexpectedly")

    # ------------------------------------------------------------ status

    def status(self) -> m.PartyStatus:
        peers = tuple(
            m.PeerStatus(peer_id=pid, name=member.name, public_key=member.public_key,
                         virtual_ip=member.virtual_ip, is_local=member.is_local,
                         connection=None if member.is_local else self.connections.get(pid))
            for pid, member in self.state.members)
        return m.PartyStatus(party_id=self.state.party_id, name=self.state.name,
                             active=self.state.active, local_peer_id=self.state.local_peer_id,
                             subnet=self.state.subnet, peers=peers)
