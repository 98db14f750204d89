"""The party actor: membership and virtual IPs (IPAM) as events, one peer connection per remote peer.

Peer connections are hosted by ``ActorConfig.peer_hosting``: ``process`` makes each one
a child thespian actor (restarted on ChildActorExited), ``inline`` keeps them as
lightweight actors inside this actor's process (each with its own stream, state,
timers and mailbox order; a crash restarts just that one from its stream).
docs/actors.md explains the choice.
"""

from __future__ import annotations

import ipaddress
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

from actors import logs
from actors import messages as m
from actors.adapters import Adapters, build_adapters
from actors.config import PROCESS
from actors.connection import PeerConnection
from actors.journal import StreamWriter, open_recorder
from actors.logs import logger
from actors.peer import PeerConnectionActor
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import ConnectionState, PartyState, apply_party
from events.streams import party_stream
from mesh import ipam
from mesh.interfaces import MeshError
from store.base import Recorder

MAX_INLINE_RESTARTS = 3


def choose_virtual_ip(party: PartyState, peer_id: str, assigned: str | None) -> str:
    """The control server's ``assigned`` address (checked), or mesh.ipam's lowest free one."""
    network = ipam.parse_subnet(party.subnet)
    owners = {ip: pid for pid, ip in party.allocations.items() if pid != peer_id}
    if assigned is None:
        decided = ipam.allocate(party, peer_id)
        return decided.virtual_ip if decided else party.allocations[peer_id]
    try:
        address = ipaddress.ip_address(assigned)
    except ValueError:
        raise ipam.IpamError(f"virtual IP {assigned!r} is not an address") from None
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise ipam.IpamError(f"virtual IP {assigned} is outside {party.subnet}")
    if assigned in owners:
        raise ipam.IpamError(f"virtual IP {assigned} already belongs to {owners[assigned]}")
    return assigned


class InlineHost:
    """ConnectionHost for a peer connection living inside its party actor."""

    def __init__(self, party: PartyActor, peer_id: str) -> None:
        self.party = party
        self.peer_id = peer_id

    def schedule(self, delay_s: float, timer: m.Timer) -> None:
        self.party.wakeupAfter(timedelta(seconds=delay_s), timer)

    def notify_parent(self, message: Any) -> None:
        self.party.on_child_message(message)

    def finished(self) -> None:
        self.party.inline.pop(self.peer_id, None)


class PartyActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.init: m.PartyInit | None = None
        self.state = PartyState()
        self.writer: StreamWriter | None = None
        self.recorder: Recorder | None = None
        self.adapters: Adapters | None = None
        self.children: dict[str, ActorAddress] = {}  # process hosting
        self.inline: dict[str, PeerConnection] = {}  # inline hosting
        self.crashes: dict[str, int] = {}
        self.connections: dict[str, ConnectionState] = {}  # status cache, pushed by the peers
        self.candidates: dict[str, tuple[str, ...]] = {}
        self.relay: str | None = None
        self.closing: tuple[set[str], Any, str] | None = None  # (pending peers, reply_to, reason)
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
            case m.Forwarded(command=m.CreateParty() | m.JoinParty() as command):
                self._open(command, message.reply_to)
            case m.Forwarded(command=m.LeaveParty() as command):
                self._leave(command, message.reply_to)
            case m.PeerAnnounced():
                self._announced(message)
            case m.PeerDeparted():
                self._departed(message)
            case m.RemoteCandidates() | m.Observations():
                self._to_peer(message.peer_id, message)
            case m.ConnectionUpdate() | m.PeerClosed():
                self.on_child_message(message)
            case m.RelayChanged():
                self.relay = message.relay
                for peer_id in list(self.children) + list(self.inline):
                    self._to_peer(peer_id, message)
            case m.PartyStatusQuery():
                self.send(sender, m.PartyStatusReply(message.request_id, self.status()))
            case m.ChildrenQuery():
                self.send(sender, m.ChildAddresses(
                    tuple(self.children.items()) + tuple((p, None) for p in self.inline)))
            case WakeupMessage(payload=m.Timer(kind="restart") as timer):
                if self.timers.is_current(timer) and not self.stopping:
                    self._respawn(timer.target)
            case WakeupMessage(payload=m.Timer() as timer):
                if timer.target in self.inline:
                    self._inline_call(timer.target, lambda c: c.handle(timer))
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
        self.recorder = open_recorder(init.store)
        self.adapters = build_adapters(init.adapters)
        self.writer = StreamWriter(self.recorder, party_stream(init.node_id, init.party_id),
                                   new_incarnation(),
                                   {"node_id": init.node_id, "actor": f"party/{init.party_id}"})
        self.state = self.writer.replay(apply_party, PartyState())
        if self.state.active:
            self.log.info("recovered party with {} members", len(self.state.members))
            for peer_id in self.state.members_by_id:
                self._spawn(peer_id)

    def _commit(self, events: list[Event], causation: str) -> None:
        assert self.writer is not None
        for record in self.writer.append(events, causation):
            self.state = apply_party(self.state, record.event)

    # ------------------------------------------------------------ commands

    def _open(self, command: m.CreateParty | m.JoinParty, reply_to: Any) -> None:
        assert self.adapters is not None
        if self.state.active:
            self.send(reply_to, m.CommandRejected(type(command).__name__,
                                                  f"party {command.party_id} is already open"))
            return
        try:
            empty = PartyState(party_id=command.party_id, subnet=command.subnet)
            virtual_ip = choose_virtual_ip(empty, command.local_peer_id, command.local_virtual_ip)
        except MeshError as error:
            self.reject(type(command).__name__, str(error))
            self.send(reply_to, m.CommandRejected(type(command).__name__, str(error)))
            return
        base = {"party_id": command.party_id, "name": command.name, "subnet": command.subnet}
        opened: Event = (ev.PartyCreated(**base, host_peer_id=command.local_peer_id)
                         if isinstance(command, m.CreateParty) else
                         ev.PartyJoined(**base, local_peer_id=command.local_peer_id,
                                        control_url=command.control_url))
        self._commit([
            opened,
            ev.PeerJoined(party_id=command.party_id, peer_id=command.local_peer_id,
                          name=command.local_name, public_key=self.adapters.wireguard.public_key,
                          is_local=True),
            ev.VirtualIpAllocated(party_id=command.party_id, peer_id=command.local_peer_id,
                                  virtual_ip=virtual_ip)], type(command).__name__)
        self.send(reply_to, m.PartyOpened(command.party_id, command.local_peer_id, virtual_ip))

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
        hosted = set(self.children) | set(self.inline)
        orphans = self._orphans(hosted)
        self._commit(events, "LeaveParty")
        self.closing = (hosted | set(orphans), reply_to, command.reason)
        for peer_id in hosted:
            self._close_peer(peer_id, "the local node left the party")
        for peer_id, init in orphans.items():
            self._host(peer_id, replace(init, close_reason="the local node left the party"))
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self.closing is not None and not self.closing[0]:
            _, reply_to, reason = self.closing
            self.closing = None
            self.send(self.parent, m.Forwarded(m.PartyClosed(self.state.party_id, reason), reply_to))

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
        if message.candidates:
            self.candidates[message.peer_id] = tuple(message.candidates)
        members = self.state.members_by_id
        if message.peer_id in members:
            self._to_peer(message.peer_id, message)
            return
        try:
            virtual_ip = choose_virtual_ip(self.state, message.peer_id, message.virtual_ip)
        except MeshError as error:
            self.reject(name, str(error))
            return
        self._commit([
            ev.PeerJoined(party_id=self.state.party_id, peer_id=message.peer_id, name=message.name,
                          public_key=message.public_key, nat_type=message.nat_type),
            ev.VirtualIpAllocated(party_id=self.state.party_id, peer_id=message.peer_id,
                                  virtual_ip=virtual_ip)], name)
        self._spawn(message.peer_id)

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
        orphan = self._orphans(set(self.children) | set(self.inline)).get(member.peer_id)
        self._commit(events, "PeerDeparted")
        if orphan is None:
            self._close_peer(member.peer_id, message.reason)
        else:
            self._host(member.peer_id, replace(orphan, close_reason=message.reason))

    # ------------------------------------------------------------ peer connections

    def _peer_init(self, peer_id: str) -> m.PeerInit:
        assert self.init is not None
        member = self.state.members_by_id[peer_id]
        return m.PeerInit(
            node_id=self.init.node_id, party_id=self.state.party_id, peer_id=peer_id,
            local_peer_id=self.state.local_peer_id, public_key=member.public_key,
            virtual_ip=member.virtual_ip or "", candidates=self.candidates.get(peer_id, ()),
            store=self.init.store, adapters=self.init.adapters, config=self.init.config,
            log=self.init.log, relay=self.relay, local_nat_type=self.init.local_nat_type,
            remote_nat_type=member.nat_type)

    def _orphans(self, hosted: set[str]) -> dict[str, m.PeerInit]:
        """Remote members whose connection is not hosted right now (crashed, awaiting restart)."""
        return {peer_id: self._peer_init(peer_id) for peer_id, member in self.state.members
                if not member.is_local and peer_id not in hosted}

    def _spawn(self, peer_id: str) -> None:
        member = self.state.members_by_id[peer_id]
        if not member.is_local:
            self._host(peer_id, self._peer_init(peer_id))

    def _host(self, peer_id: str, init: m.PeerInit) -> None:
        assert self.init is not None
        if self.init.config.peer_hosting == PROCESS:
            address = self.createActor(PeerConnectionActor)
            self.children[peer_id] = address
            self.send(address, init)
            return
        connection = PeerConnection(init, InlineHost(self, peer_id), self.recorder, self.adapters)
        self.inline[peer_id] = connection
        self._inline_call(peer_id, lambda c: c.start())

    def _inline_call(self, peer_id: str, call: Any) -> None:
        connection = self.inline.get(peer_id)
        if connection is None:
            return
        try:
            call(connection)
            self.crashes.pop(peer_id, None)
        except Exception:
            crashes = self.crashes[peer_id] = self.crashes.get(peer_id, 0) + 1
            self.log.exception("peer connection {} crashed ({} in a row)", peer_id, crashes)
            self.inline.pop(peer_id, None)
            if crashes <= MAX_INLINE_RESTARTS and peer_id in self.state.members_by_id:
                self._spawn(peer_id)  # a fresh incarnation recovers from its stream
            elif self.closing is not None:  # given up on: a leave must not wait for it forever
                self.closing[0].discard(peer_id)
                self._maybe_closed()

    def _to_peer(self, peer_id: str, message: Any) -> None:
        if peer_id in self.children:
            self.send(self.children[peer_id], message)
        elif peer_id in self.inline:
            self._inline_call(peer_id, lambda c: c.handle(message))
        else:
            self.reject(type(message).__name__, f"no peer connection {peer_id!r} in this party")

    def _close_peer(self, peer_id: str, reason: str) -> None:
        if peer_id in self.children:
            self.send(self.children[peer_id], m.ClosePeer(reason))
        elif peer_id in self.inline:
            self._inline_call(peer_id, lambda c: c.close(reason))

    def on_child_message(self, message: Any) -> None:
        if isinstance(message, m.ConnectionUpdate):
            self.connections[message.peer_id] = message.state
        elif isinstance(message, m.PeerClosed):
            self.children.pop(message.peer_id, None)
            if self.closing is not None:
                self.closing[0].discard(message.peer_id)
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
                             self.timers.arm("restart", target=peer_id))

    def _respawn(self, peer_id: str) -> None:
        if (self.state.active and peer_id in self.state.members_by_id
                and peer_id not in self.children and peer_id not in self.inline):
            self.log.warning("peer connection {} exited; restarting it from its stream", peer_id)
            self._spawn(peer_id)

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
