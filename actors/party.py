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

import time
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
from actors.accounts import account_events
from actors.connection import PeerConnectionActor
from actors.journal import StreamWriter, open_recorder
from actors.logs import logger
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import ConnectionState, DeviceState, PartyState, apply_connection, apply_party
from events.streams import party_stream, peer_stream
from mesh import ipam
from mesh.control.identity import IdentityError, peer_id_for
from mesh.interfaces import MeshError, PeerStats

RESTART = "restart"
DEVICE_POLL = "device-poll"
INTERFACE_CHECK = "interface-check"
DEVICE_NAME_LIMIT = 64  # the control protocol's limit on names


def device_name_error(name: str) -> str | None:
    """Why ``name`` cannot name a static device, or None."""
    if not name or len(name) > DEVICE_NAME_LIMIT or not name.isprintable() or name != name.strip():
        return f"a device name is 1 to {DEVICE_NAME_LIMIT} printable characters, without outer spaces"
    return None


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
        # Static devices: one writer of each device's connection stream, and its state there.
        self.device_writers: dict[str, StreamWriter] = {}
        self.device_connections: dict[str, ConnectionState] = {}
        self.exporting: dict[str, Any] = {}  # device id -> who waits for its ServeStaticDevice outcome
        self.polling = False

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
            case m.Forwarded(command=m.ExportDevice() as command):
                self._export(command, message.reply_to)
            case fx.EffectDone(effect=fx.ServeStaticDevice()):
                self._served(message)
            case fx.EffectDone(effect=fx.RouteThroughPeer()):
                self._routed(message)
            case fx.EffectDone(effect=fx.ReadPeerStats()):
                self._device_stats(message)
            case fx.EffectDone(effect=fx.RemovePeer()):
                if not message.ok:
                    self.log.warning("could not remove a static device from WireGuard: {}", message.error)
            case WakeupMessage(payload=m.Timer(kind="device-poll") as timer):
                if self.timers.is_current(timer):
                    self._poll_devices()
            case fx.EffectDone(effect=fx.AssignLocalAddress()):
                self._address_assigned(message)
            case fx.EffectDone(effect=fx.CheckLocalAddress()):
                self._address_checked(message)
            case WakeupMessage(payload=m.Timer(kind="interface-check") as timer):
                if self.timers.is_current(timer):
                    self._check_interface()
            case m.PeerAnnounced():
                self._announced(message)
            case m.RemoteCandidates():
                self._candidates(message)
            case m.PeerDeparted():
                self._departed(message)
            case m.PeerAccount():
                self._account(message)
            case m.Observations() | m.PeerAskedForRelay():
                self._to_peer(message.peer_id, message)
            case m.ConnectionUpdate():
                self.connections[message.peer_id] = message.state
            case m.PeerClosed():
                self._peer_closed(message.peer_id)
            case m.RelaySuspected():
                self.send(self.parent, message)  # the node hands it to its relay monitor
            case m.RelayQuality() | m.RelaysReachable() | m.ControlServerBack():
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
                self._arm_interface_check()
            for peer_id in self.state.members_by_id:
                self._spawn(peer_id)
            self._restore_devices()

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
            if self.state.local_address_error != done.error:  # a retry failing alike: said once
                self.log.error("cannot put {} on the interface: {}", effect.virtual_ip, done.error)
                self._commit([ev.LocalAddressFailed(party_id=self.state.party_id,
                                                    virtual_ip=effect.virtual_ip, error=done.error or "")],
                             "interface")
        waiting, self.opening = self.opening, []
        for reply_to in waiting:
            self._answer_open(reply_to)

    def _arm_interface_check(self) -> None:
        assert self.init is not None
        self.wakeupAfter(timedelta(seconds=self.init.config.interface_check_s),
                         self.timers.arm(INTERFACE_CHECK))

    def _check_interface(self) -> None:
        """The address still on a working interface (wireguard-go may have exited under it), or,
        while it is not, another try to put it there: a cause that went away heals by itself."""
        assert self.init is not None
        local_ip = self.state.allocations.get(self.state.local_peer_id)
        if self.stopping or not self.state.active or not local_ip:
            return
        if self.state.local_address == local_ip:
            self.send(self.init.edge, fx.CheckLocalAddress(tag="check", virtual_ip=local_ip))
        else:
            self.send(self.init.edge, fx.AssignLocalAddress(tag="retry", virtual_ip=local_ip))
        self._arm_interface_check()

    def _address_checked(self, done: fx.EffectDone) -> None:
        assert self.init is not None
        effect = done.effect
        assert isinstance(effect, fx.CheckLocalAddress)
        if done.ok or not self.state.active or self.state.local_address != effect.virtual_ip:
            return
        self.log.error("{} is on no working interface: {}", effect.virtual_ip, done.error)
        self._commit([ev.LocalAddressFailed(party_id=self.state.party_id, virtual_ip=effect.virtual_ip,
                                            error=done.error or "")], "interface")
        self.send(self.init.edge, fx.AssignLocalAddress(tag="again", virtual_ip=effect.virtual_ip))

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
        devices = self.state.devices
        keys = {peer_id: member.public_key for peer_id, member in self.state.members}
        events[:0] = [ev.StaticDeviceRemoved(party_id=self.state.party_id, device_id=device_id,
                                             reason="the local node left the party")
                      for device_id, _ in devices]
        events.append(ev.PartyLeft(party_id=self.state.party_id, reason=command.reason))
        orphans = self._orphans()
        self._commit(events, "LeaveParty")
        self._devices_gone(devices, "the local node left the party", keys)
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
            self._reconcile_devices(message)
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
        self._reconcile_devices(message)

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

    def _account(self, message: m.PeerAccount) -> None:
        """A member's word about its own side: recorded for diagnosis, never acted on."""
        member = self.state.members_by_id.get(message.peer_id) if isinstance(message.peer_id, str) else None
        if not self.state.active or member is None or member.is_local:
            self.reject("PeerAccount", "an account comes only from another member of the party")
            return
        events = account_events(self.state.party_id, message.peer_id, message.items, message.said_by)
        if isinstance(events, str):
            self.reject("PeerAccount", events)
            return
        self._commit(list(events), "PeerAccount")

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
        routed = tuple((d, s) for d, s in self.state.devices if s.via_peer_id == member.peer_id)
        events[:0] = [ev.StaticDeviceRemoved(party_id=self.state.party_id, device_id=device_id,
                                             reason=f"its routing member {member.name or member.peer_id} "
                                                    f"left: {message.reason}")
                      for device_id, _ in routed]
        orphan = self._orphans().get(member.peer_id)
        self._commit(events, "PeerDeparted")
        self._devices_gone(routed, f"its routing member left: {message.reason}",
                           {member.peer_id: member.public_key})
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

    # ------------------------------------------------------------ static devices

    def _export(self, command: m.ExportDevice, reply_to: Any) -> None:
        """This node becomes the routing member of a device without LANrage (intent, then effect)."""
        assert self.init is not None
        kind = type(command).__name__
        refusal = device_name_error(command.name) if self.state.active else \
            f"party {command.party_id} is not open"
        device_id = ""
        if refusal is None:
            taken = {member.name.casefold() for _, member in self.state.members}
            taken.update(device.name.casefold() for _, device in self.state.devices)
            if command.name.casefold() in taken:
                refusal = f"the name {command.name!r} is taken in party {self.state.party_id}"
        if refusal is None:
            try:
                device_id = peer_id_for(command.public_key)
            except IdentityError as error:
                refusal = f"invalid device public key: {error}"
        if refusal is None and device_id in self.state.address_owners:
            refusal = "this public key is already in the party"
        virtual_ip = ""
        if refusal is None:
            try:
                decided = ipam.allocate(self.state, device_id)
                assert decided is not None  # a new device holds no address
                virtual_ip = decided.virtual_ip
            except MeshError as error:
                refusal = str(error)
        if refusal is not None:
            self.reject(kind, refusal)
            self.send(reply_to, m.CommandRejected(kind, refusal))
            return
        self._commit([ev.StaticDeviceExported(
            party_id=self.state.party_id, device_id=device_id, name=command.name,
            public_key=command.public_key, virtual_ip=virtual_ip, via_peer_id=self.state.local_peer_id,
            endpoint=command.endpoint)], kind)
        self._device_transition(device_id, ev.CONNECTING,
                                "exported as a static WireGuard peer; waiting for its first handshake")
        self.exporting[device_id] = reply_to
        self.send(self.init.edge, fx.ServeStaticDevice(tag=device_id, public_key=command.public_key,
                                                       virtual_ip=virtual_ip))
        self._arm_poll()

    def _served(self, done: fx.EffectDone) -> None:
        effect = done.effect
        assert isinstance(effect, fx.ServeStaticDevice)
        device = self.state.devices_by_id.get(effect.tag)
        reply_to = self.exporting.pop(effect.tag, None)
        if device is None or device.public_key != effect.public_key:
            return  # removed meanwhile
        if done.ok:
            if not device.applied:
                self._commit([ev.StaticDeviceApplied(
                    party_id=self.state.party_id, device_id=device.device_id,
                    detail="a WireGuard peer of this node, with IPv4 forwarding on")], "ServeStaticDevice")
            if reply_to is not None:
                local = self.state.members_by_id.get(self.state.local_peer_id)
                self.send(reply_to, m.DeviceExported(
                    party_id=self.state.party_id, device_id=device.device_id, name=device.name,
                    virtual_ip=device.virtual_ip, subnet=self.state.subnet,
                    router_public_key=local.public_key if local else "",
                    router_name=local.name if local else "", endpoint=device.endpoint))
            return
        self.log.error("cannot serve static device {}: {}", device.name, done.error)
        if reply_to is None:
            if device.error != done.error:
                self._commit([ev.StaticDeviceFailed(party_id=self.state.party_id, device_id=device.device_id,
                                                    error=done.error or "")], "ServeStaticDevice")
            return
        # A new export that cannot be served is taken back: the user gets the error, not a config.
        self._commit([ev.StaticDeviceFailed(party_id=self.state.party_id, device_id=device.device_id,
                                            error=done.error or ""),
                      ev.StaticDeviceRemoved(party_id=self.state.party_id, device_id=device.device_id,
                                             reason="could not be set up")], "ServeStaticDevice")
        self._devices_gone(((device.device_id, device),), f"could not be set up: {done.error}")
        self.send(reply_to, m.CommandRejected("ExportDevice", f"cannot serve the device: {done.error}"))

    def _reconcile_devices(self, message: m.PeerAnnounced) -> None:
        """The devices a member routes for, as it announced them: routed here through it."""
        assert self.init is not None
        if message.devices is None or message.peer_id == self.state.local_peer_id:
            return
        member = self.state.members_by_id.get(message.peer_id)
        if member is None:
            return
        current = {d: s for d, s in self.state.devices if s.via_peer_id == message.peer_id}
        events: list[Event] = []
        said: set[str] = set()
        for info in message.devices[:m.MAX_ANNOUNCED_DEVICES]:
            problem = self._announced_device_error(info, message.peer_id)
            if problem is not None:
                self.reject("PeerAnnounced", f"static device {info.device_id!r} of {member.name}: {problem}")
                continue
            said.add(info.device_id)
            old = current.get(info.device_id)
            if old is None or (old.name, old.public_key, old.virtual_ip) != (info.name, info.public_key,
                                                                            info.virtual_ip):
                events.append(ev.StaticDeviceRouted(
                    party_id=self.state.party_id, device_id=info.device_id, name=info.name,
                    public_key=info.public_key, virtual_ip=info.virtual_ip, via_peer_id=message.peer_id))
        gone = tuple((d, s) for d, s in current.items() if d not in said)
        events.extend(ev.StaticDeviceRemoved(party_id=self.state.party_id, device_id=device_id,
                                             reason=f"{member.name or member.peer_id} no longer routes it")
                      for device_id, _ in gone)
        if not events:
            return
        self._commit(events, "PeerAnnounced")
        self._devices_gone(gone, f"{member.name or member.peer_id} no longer routes it")
        for event in events:
            if isinstance(event, ev.StaticDeviceRouted):
                self._device_transition(event.device_id, ev.CONNECTING,
                                        f"routed through member {member.name or member.peer_id}")
        self._route_through(message.peer_id)

    def _announced_device_error(self, info: Any, via_peer_id: str) -> str | None:
        if not isinstance(info, m.StaticDeviceInfo):
            return "not a device"
        if device_name_error(info.name) is not None:
            return device_name_error(info.name)
        try:
            if peer_id_for(info.public_key) != info.device_id:
                return "its id is not its public key's"
        except IdentityError as error:
            return f"invalid public key: {error}"
        holder = self.state.devices_by_id.get(info.device_id)
        if info.device_id in self.state.members_by_id or (holder and holder.via_peer_id != via_peer_id):
            return "already in the party through another member"
        try:
            ipam.choose(self.state, info.device_id, info.virtual_ip)
        except MeshError as error:
            return str(error)
        return None

    def _route_through(self, via_peer_id: str) -> None:
        """Tell WireGuard which devices' /32s the member's peer carries now (all of them)."""
        assert self.init is not None
        member = self.state.members_by_id.get(via_peer_id)
        if member is None or member.is_local:
            return
        routes = tuple(sorted(f"{device.virtual_ip}/32" for _, device in self.state.devices
                              if device.via_peer_id == via_peer_id))
        self.send(self.init.edge, fx.RouteThroughPeer(tag=via_peer_id, public_key=member.public_key,
                                                      routes=routes))

    def _routed(self, done: fx.EffectDone) -> None:
        effect = done.effect
        assert isinstance(effect, fx.RouteThroughPeer)
        via = self.state.members_by_id.get(effect.tag)
        name = via.name if via and via.name else effect.tag
        carried = [s for _, s in self.state.devices
                   if s.via_peer_id == effect.tag and f"{s.virtual_ip}/32" in effect.routes]
        if done.ok:
            events: list[Event] = [
                ev.StaticDeviceApplied(party_id=self.state.party_id, device_id=device.device_id,
                                       detail=f"{device.virtual_ip}/32 goes through member {name}")
                for device in carried if not device.applied]
        else:
            self.log.error("cannot route static devices through {}: {}", name, done.error)
            events = [ev.StaticDeviceFailed(party_id=self.state.party_id, device_id=device.device_id,
                                            error=done.error or "")
                      for device in carried if device.error != done.error]
        self._commit(events, "RouteThroughPeer")
        for device in carried:
            if done.ok:
                self._device_transition(device.device_id, ev.CONNECTED,
                                        f"static device; routed through member {name}")
            else:
                self._device_transition(device.device_id, ev.FAILED,
                                        f"cannot route it through member {name}: {done.error}")

    def _devices_gone(self, devices: tuple[tuple[str, DeviceState], ...], reason: str,
                      gone_members: dict[str, str] | None = None) -> None:
        """After their removal is recorded: WireGuard forgets them, their streams say closed.

        ``gone_members`` (peer id -> public key): routing members no longer in the party,
        whose WireGuard peer must not keep the routes should it come back.
        """
        assert self.init is not None
        vias: set[str] = set()
        for device_id, device in devices:
            self.exporting.pop(device_id, None)
            if device.via_peer_id == self.state.local_peer_id:
                self.send(self.init.edge, fx.RemovePeer(tag=device_id, public_key=device.public_key))
            else:
                vias.add(device.via_peer_id)
            self._device_transition(device_id, ev.CLOSED, reason)
        for via in vias:
            if via in self.state.members_by_id:
                self._route_through(via)
            elif gone_members and via in gone_members:
                self.send(self.init.edge, fx.RouteThroughPeer(tag=via, public_key=gone_members[via],
                                                              routes=()))

    def _restore_devices(self) -> None:
        """After a restart: WireGuard is told again what the log says about the devices."""
        assert self.init is not None
        vias: set[str] = set()
        for device_id, device in self.state.devices:
            if device.via_peer_id == self.state.local_peer_id:
                self.send(self.init.edge, fx.ServeStaticDevice(tag=device_id, public_key=device.public_key,
                                                               virtual_ip=device.virtual_ip))
                self._arm_poll()
            else:
                vias.add(device.via_peer_id)
        for via in vias:
            self._route_through(via)

    def _arm_poll(self) -> None:
        assert self.init is not None
        if not self.polling:
            self.polling = True
            self.wakeupAfter(timedelta(seconds=self.init.config.static_device.poll_s),
                             self.timers.arm(DEVICE_POLL))

    def _poll_devices(self) -> None:
        assert self.init is not None
        self.polling = False
        local = [(d, s) for d, s in self.state.devices if s.via_peer_id == self.state.local_peer_id]
        if not local or self.stopping or not self.state.active:
            return
        for device_id, device in local:
            self.send(self.init.edge, fx.ReadPeerStats(tag=device_id, public_key=device.public_key))
        self._arm_poll()

    def _device_stats(self, done: fx.EffectDone) -> None:
        """A device's last handshake: connected while it is recent, failed once it is not."""
        assert self.init is not None
        effect = done.effect
        assert isinstance(effect, fx.ReadPeerStats)
        device = self.state.devices_by_id.get(effect.tag)
        if device is None or device.public_key != effect.public_key or not done.ok:
            return
        stats = done.value if isinstance(done.value, PeerStats) else None
        handshake = stats.last_handshake if stats else None
        silent_after = self.init.config.static_device.silent_after_s
        if handshake and time.time() - handshake < silent_after:
            self._device_transition(device.device_id, ev.CONNECTED, "handshake from the device",
                                    endpoint=stats.endpoint if stats else None)
        elif self.device_connections.get(device.device_id, ConnectionState()).state == ev.CONNECTED:
            self._device_transition(device.device_id, ev.FAILED,
                                    f"no handshake from the device for {silent_after:.0f} s: it is off, "
                                    f"or cannot reach {device.endpoint or 'this node'}")

    def _device_transition(self, device_id: str, to_state: str, reason: str,
                           endpoint: str | None = None) -> None:
        """One ``ConnectionStateChanged`` in the device's own stream, when its state changes."""
        assert self.init is not None
        writer = self.device_writers.get(device_id)
        if writer is None:
            writer = StreamWriter(self.writer.recorder if self.writer else open_recorder(self.init.store),
                                  peer_stream(self.init.node_id, self.state.party_id, device_id),
                                  self.timers.incarnation,
                                  {"node_id": self.init.node_id, "actor": f"party/{self.init.party_id}"})
            self.device_connections[device_id] = writer.replay(apply_connection, ConnectionState())
            self.device_writers[device_id] = writer
        current = self.device_connections[device_id]
        if current.state == to_state and (endpoint is None or current.endpoint == endpoint):
            return
        event = ev.ConnectionStateChanged(party_id=self.state.party_id, peer_id=device_id,
                                          from_state=current.state, to_state=to_state, reason=reason,
                                          path=ev.DIRECT if endpoint else None, endpoint=endpoint)
        for record in writer.append([event], "static-device"):
            self.device_connections[device_id] = apply_connection(current, record.event)

    # ------------------------------------------------------------ status

    def status(self) -> m.PartyStatus:
        peers = tuple(
            m.PeerStatus(peer_id=pid, name=member.name, public_key=member.public_key,
                         virtual_ip=member.virtual_ip, is_local=member.is_local,
                         connection=None if member.is_local else self.connections.get(pid))
            for pid, member in self.state.members)
        return m.PartyStatus(party_id=self.state.party_id, name=self.state.name,
                             active=self.state.active, local_peer_id=self.state.local_peer_id,
                             subnet=self.state.subnet, peers=peers,
                             devices=tuple(device for _, device in self.state.devices))
