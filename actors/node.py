"""The node actor: the supervisor at the top, and the one address the agent talks to.

It owns the ``node:<node_id>`` stream and creates the edge (the one actor that performs
effects), the relay monitor and one party actor per open party. It opens a party by
writing the party's first events and its own ``NodePartyOpened`` in one transaction,
routes commands by party id, restarts any child that exits (children recover by
replaying their own streams), and gathers status.

A start that finds no clean stop of the previous run records ``NodeRunEndedAbruptly``
first, with the last event the node's actors wrote before it ended; party requests
that never got their outcome are recorded as failed ("interrupted").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import thespian.system.timing as thespian_timing
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
from actors.adapters import build_adapters
from actors.edge import EdgeActor
from actors.journal import StreamWriter, append_together, appends_through, open_recorder
from actors.logs import logger
from actors.party import PartyActor
from actors.relay_monitor import RelayMonitorActor
from actors.timers import Timers, new_incarnation
from events import types as ev
from events.base import Event
from events.fold import NodeState, PartyState, apply_node, apply_party, fold_stream
from events.streams import metrics_stream, node_stream, party_stream, peer_stream, relay_stream
from mesh import ipam
from mesh.control.accept import check_subnet
from mesh.interfaces import MeshError
from store.base import RecordedEvent, Recorder

STATUS = "status"
RESTART = "restart"
ALIVE = "alive"
# Sign-of-life checks per alive interval: a write is seen within a quarter of it, so the
# NodeAlive that follows the last row comes no later than one interval after that row.
ALIVE_CHECKS = 4
MONITOR = "relay-monitor"
SOFTWARE_VERSION = "0.2.0"


@dataclass
class Gather:
    reply_to: Any
    waiting: set[str]
    replies: dict[str, m.PartyStatus] = field(default_factory=dict)


def last_written(recorder: Recorder, node_id: str, state: NodeState,
                 relays: tuple[str, ...]) -> RecordedEvent | None:
    """The newest event among the streams this node's actors write."""
    streams = [node_stream(node_id), *(relay_stream(node_id, relay) for relay in relays)]
    for party_id in state.parties:
        streams.append(party_stream(node_id, party_id))
        records = recorder.read_stream(party_stream(node_id, party_id))
        party = fold_stream(apply_party, PartyState(), (record.event for record in records))
        for peer_id, member in party.members:
            if not member.is_local:  # a connection's samples have a stream of their own
                streams += [peer_stream(node_id, party_id, peer_id),
                            metrics_stream(node_id, party_id, peer_id)]
    newest: RecordedEvent | None = None
    for stream in streams:
        position = recorder.stream_position(stream)
        if position:
            record = recorder.read_stream(stream, position)[-1]
            if newest is None or record.global_position > newest.global_position:
                newest = record
    return newest


class NodeActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.start: m.StartNode | None = None
        self.state = NodeState()
        self.writer: StreamWriter | None = None
        self.recorder: Recorder | None = None
        self.edge: ActorAddress | None = None
        self.parties: dict[str, ActorAddress] = {}
        self.monitor: ActorAddress | None = None
        self.local_candidates: tuple[str, ...] = ()  # derived: the edge's answer at start
        self.ready = False
        self.waiting_ready: list[Any] = []
        self.timers = Timers(new_incarnation())
        self.requests = itertools.count(1)
        self.gathers: dict[int, Gather] = {}
        self.stopping = False
        self.log = logger
        self.appends_seen = 0  # appends_through(recorder) at the last sign-of-life check
        self.checked_at = 0.0  # thespian time of that check
        self.row_after = 0.0  # the node's newest row is at or after this (thespian time)
        self.written_after = 0.0  # ... and its newest row other than a NodeAlive

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, m.StartNode):
            if self.start is None:
                self._start(message)
            self.waiting_ready.append(sender)
            self._answer_ready()
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
            case fx.EffectDone(effect=fx.DetectNat()):
                self._detected(message)
            case m.RequestParty():
                self._commit([ev.PartyRequested(node_id=self.state.node_id, request_id=message.request_id,
                                                kind=message.kind, control_url=message.control_url,
                                                name=message.name, party_id=message.party_id)])
                self.send(sender, m.Recorded())
            case m.FailPartyRequest():
                if message.request_id in self.state.pending_requests:
                    self._commit([ev.PartyRequestFailed(node_id=self.state.node_id,
                                                        request_id=message.request_id, error=message.error)])
                self.send(sender, m.Recorded())
            case m.CreateParty() | m.JoinParty():
                self._open(message, sender)
            case m.LeaveParty() | m.ExportDevice():
                if self._party(message, sender):
                    self.send(self.parties[message.party_id], m.Forwarded(message, sender))
            case m.ControlReachability():
                self._control_reachability(message)
            case m.PublicEndpointMoved():
                self._endpoint_moved(message)
            case m.PortMappingStep():
                self._port_mapping(message)
                self.send(sender, m.Recorded())
            case (m.PeerAnnounced() | m.PeerDeparted() | m.RemoteCandidates() | m.Observations()
                  | m.PeerAskedForRelay() | m.PeerAccount()):
                if self._party(message, None):
                    self.send(self.parties[message.party_id], message)
            case m.RelaySuspected():
                if self.monitor is not None:
                    self.send(self.monitor, message)
            case m.Forwarded(command=m.PartyClosed() as closed):
                self._closed(closed, message.reply_to)
            case m.StatusQuery():
                self._status(sender)
            case m.PartyStatusReply():
                self._status_reply(message)
            case m.RelayQuality() | m.RelaysReachable():
                for address in self.parties.values():
                    self.send(address, message)
            case m.RelayChanged():
                # The same rule as the replay's world fold: the node's relay is the last selected.
                self.state = replace(self.state, selected_relay=message.relay)
                for address in self.parties.values():
                    self.send(address, message)
            case m.ChildrenQuery():
                self.send(sender, m.ChildAddresses(
                    (("edge", self.edge), ("relay-monitor", self.monitor), *self.parties.items())))
            case WakeupMessage(payload=m.Timer() as timer):
                if timer.kind == STATUS:
                    self._status_timeout(timer.target)
                elif timer.kind == RESTART and self.timers.is_current(timer):
                    self._restart(timer.target)
                elif timer.kind == ALIVE and self.timers.is_current(timer):
                    self._alive()
            case WakeupMessage():
                pass
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
        wireguard = build_adapters(start.adapters).wireguard  # its key and port; no I/O
        self.recorder = open_recorder(start.store, upgrade=True)
        self.writer = StreamWriter(self.recorder, node_stream(start.node_id), self.timers.incarnation,
                                   {"node_id": start.node_id, "actor": "node"})
        self.state = self.writer.replay(apply_node, NodeState())
        settle: list[Event] = []
        if self.state.running:
            last = last_written(self.recorder, start.node_id, self.state, start.relays)
            assert last is not None  # running implies a NodeStarted in the node stream
            settle.append(ev.NodeRunEndedAbruptly(node_id=start.node_id,
                                                  last_global_position=last.global_position,
                                                  last_recorded_at=last.recorded_at.isoformat()))
        interrupted = "interrupted: the node stopped before the control plane answered"
        settle.extend(ev.PartyRequestFailed(node_id=start.node_id, request_id=request_id, error=interrupted)
                      for request_id in self.state.pending_requests)
        self._commit([*settle, ev.NodeStarted(node_id=start.node_id, public_key=wireguard.public_key,
                                              listen_port=wireguard.listen_port,
                                              software_version=SOFTWARE_VERSION)])
        self.edge = self.createActor(EdgeActor)
        self.send(self.edge, m.EdgeInit(start.adapters, start.executor, start.log))
        self.send(self.edge, fx.DetectNat(tag="start"))
        self.appends_seen = appends_through(self.recorder)
        self.checked_at = self.row_after = self.written_after = thespian_timing.currentTime()
        self._arm_alive()

    def _arm_alive(self) -> None:
        assert self.start is not None
        self.wakeupAfter(timedelta(seconds=self.start.config.alive_interval_s / ALIVE_CHECKS),
                         self.timers.arm(ALIVE))

    def _alive(self) -> None:
        """A sign of life once the node's newest row is an alive interval old: one row a quiet interval."""
        assert self.start is not None and self.recorder is not None
        if self.stopping:
            return
        now = thespian_timing.currentTime()
        if appends_through(self.recorder) != self.appends_seen:
            # Something was written since the last check, so after it.
            self.row_after = self.written_after = self.checked_at
        elif now - self.row_after >= self.start.config.alive_interval_s - 1e-6:
            quiet_s = round(now - self.written_after, 1)
            self._commit([ev.NodeAlive(node_id=self.start.node_id, quiet_s=quiet_s)])
            self.row_after = now
        self.appends_seen = appends_through(self.recorder)
        self.checked_at = now
        self._arm_alive()

    def _control_reachability(self, change: m.ControlReachability) -> None:
        """One row when a control plane is lost and one when it answers again, never one a retry."""
        assert self.start is not None
        url = change.control_url
        if not isinstance(url, str) or not url or len(url) > 2048:
            self.reject("ControlReachability", "control_url must be non-empty text")
            return
        down = url in self.state.unreachable_controls
        if not change.reachable and not down:
            self._commit([ev.ControlServerUnreachable(node_id=self.start.node_id, control_url=url,
                                                      error=str(change.error)[:500])])
        elif change.reachable and down:
            outage = change.outage_s if isinstance(change.outage_s, int | float) else None
            self._commit([ev.ControlServerReachable(node_id=self.start.node_id, control_url=url,
                                                    outage_s=None if outage is None else round(outage, 1))])
            for address in self.parties.values():
                self.send(address, m.ControlServerBack())

    def _endpoint_moved(self, moved: m.PublicEndpointMoved) -> None:
        """One row a move of the public mapping (the agent looked again and saw another)."""
        assert self.start is not None
        endpoint = moved.new_endpoint
        if not isinstance(endpoint, str) or not 0 < len(endpoint) <= 64 or ":" not in endpoint:
            self.reject("PublicEndpointMoved", "new_endpoint must be host:port")
            return
        if isinstance(moved.candidates, tuple) and all(isinstance(c, str) for c in moved.candidates):
            self.local_candidates = moved.candidates[:16]
        if endpoint == self.state.public_endpoint:
            return
        self._commit([ev.PublicEndpointChanged(
            node_id=self.start.node_id, old_endpoint=self.state.public_endpoint, new_endpoint=endpoint,
            reason=str(moved.reason)[:200], stun_server=str(moved.stun_server)[:100])])

    def _port_mapping(self, step: m.PortMappingStep) -> None:
        """One row a step of the gateway's mapping (the agent asks, renews and deletes it)."""
        assert self.start is not None
        node_id = self.start.node_id

        def text(value: Any, limit: int = 500) -> str:
            return str(value)[:limit]

        def number(value: Any, top: int) -> int:
            return value if isinstance(value, int) and 0 <= value <= top else 0

        mapped = {"protocol": text(step.protocol, 16), "external_ip": text(step.external_ip, 45),
                  "external_port": number(step.external_port, 65535)}
        lifetime = number(step.lifetime_s, 2**32 - 1)
        event: Event
        match step.kind:
            case "requested":
                event = ev.PortMappingRequested(
                    node_id=node_id, gateway=text(step.gateway, 45),
                    protocols=tuple(text(p, 16) for p in step.protocols[:3]),
                    internal_port=number(step.internal_port, 65535), lifetime_s=lifetime,
                    reason=text(step.reason, 200))
            case "obtained":
                event = ev.PortMappingObtained(node_id=node_id, gateway=text(step.gateway, 45), **mapped,
                                               internal_port=number(step.internal_port, 65535),
                                               lifetime_s=lifetime)
            case "renewed":
                event = ev.PortMappingRenewed(node_id=node_id, **mapped, lifetime_s=lifetime)
            case "lost":
                event = ev.PortMappingLost(node_id=node_id, **mapped, reason=text(step.reason),
                                           by_router=bool(step.by_router))
            case "refused":
                event = ev.PortMappingRefused(node_id=node_id, gateway=text(step.gateway, 45),
                                              reason=text(step.reason, 1000))
            case "released":
                event = ev.PortMappingReleased(node_id=node_id, **mapped, error=text(step.error))
            case _:
                self.reject("PortMappingStep", f"unknown step {text(step.kind, 32)!r}")
                return
        if isinstance(step.candidates, tuple) and all(isinstance(c, str) for c in step.candidates) \
                and step.candidates:
            self.local_candidates = step.candidates[:16]
        self._commit([event])

    def _detected(self, done: fx.EffectDone) -> None:
        """The node's NAT as its adapters see it: one row when it changes, none per restart."""
        assert self.start is not None
        info, candidates = done.value if done.ok and done.value else (None, ())
        if done.error:
            self.log.warning("NAT detection failed: {}", done.error)
        self.local_candidates = tuple(candidates)
        if info is None:
            if not self.state.relay_only:
                reason = done.error or "no STUN answer (or no STUN server configured)"
                self._commit([ev.NatDetectionFailed(node_id=self.start.node_id, reason=reason)])
        else:
            endpoint = f"{info.public_ip}:{info.public_port}" if info.public_ip and info.public_port else None
            if (info.nat_type, endpoint, False) != (self.state.nat_type, self.state.public_endpoint,
                                                    self.state.relay_only):
                self._commit([ev.NatDetected(node_id=self.start.node_id, nat_type=info.nat_type,
                                             public_ip=info.public_ip, public_port=info.public_port,
                                             local_ip=info.local_ip, local_port=info.local_port,
                                             stun_server=info.stun_server)])
        if not self.ready:
            self.ready = True
            self._start_monitor()
            for party_id in self.state.parties:
                self._start_party(party_id)
            self.log.info("node started with {} parties", len(self.state.parties))
            self._answer_ready()

    def _answer_ready(self) -> None:
        if self.ready:
            waiting, self.waiting_ready = self.waiting_ready, []
            for asker in waiting:
                self.send(asker, m.NodeReady(self.state.node_id, self.state.parties))

    def _start_monitor(self) -> None:
        assert self.start is not None
        self.monitor = self.createActor(RelayMonitorActor)
        self.send(self.monitor, m.RelayMonitorInit(
            node_id=self.start.node_id, relays=self.start.relays, store=self.start.store,
            edge=self.edge, config=self.start.config, log=self.start.log))

    def _start_party(self, party_id: str, restarted: str | None = None) -> None:
        assert self.start is not None
        address = self.createActor(PartyActor)
        self.parties[party_id] = address
        self.send(address, m.PartyInit(
            node_id=self.start.node_id, party_id=party_id, store=self.start.store, edge=self.edge,
            public_key=self.state.public_key, config=self.start.config, log=self.start.log,
            relay=self.state.selected_relay, local_nat_type=self.state.nat_type,
            local_candidates=self.local_candidates, restarted=restarted))

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
            self._start_party(name, restarted="the actor exited unexpectedly")

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
        """The party's first facts and the node's ``NodePartyOpened``, in one transaction."""
        assert self.start is not None and self.recorder is not None and self.writer is not None
        name = type(command).__name__
        if not (isinstance(command.party_id, str) and command.party_id and ":" not in command.party_id):
            self.reject(name, "party id must be non-empty text without ':'")
            self.send(reply_to, m.CommandRejected(name, "invalid party id"))
            return
        if command.party_id in self.parties:
            self.send(reply_to, m.CommandRejected(name, f"party {command.party_id} is already open"))
            return
        try:
            check_subnet(command.subnet, self.start.config.mesh_range)
            empty = PartyState(party_id=command.party_id, subnet=command.subnet)
            virtual_ip = ipam.choose(empty, command.local_peer_id, command.local_virtual_ip)
        except MeshError as error:
            self.reject(name, str(error))
            self.send(reply_to, m.CommandRejected(name, str(error)))
            return
        base = {"party_id": command.party_id, "name": command.name, "subnet": command.subnet,
                "control_url": command.control_url}
        opened: Event = (ev.PartyCreated(**base, host_peer_id=command.local_peer_id)
                         if isinstance(command, m.CreateParty) else
                         ev.PartyJoined(**base, local_peer_id=command.local_peer_id))
        party_writer = StreamWriter(self.recorder, party_stream(self.start.node_id, command.party_id),
                                    self.timers.incarnation, {"node_id": self.start.node_id, "actor": "node"})
        party_writer.position = self.recorder.stream_position(party_writer.stream_id)
        party_events: list[Event] = [
            opened,
            ev.PeerJoined(party_id=command.party_id, peer_id=command.local_peer_id, name=command.local_name,
                          public_key=self.state.public_key, is_local=True),
            ev.VirtualIpAllocated(party_id=command.party_id, peer_id=command.local_peer_id,
                                  virtual_ip=virtual_ip)]
        node_events: list[Event] = [ev.NodePartyOpened(node_id=self.start.node_id, party_id=command.party_id,
                                                       request_id=command.request_id)]
        node_records, _ = append_together([(self.writer, node_events, name),
                                           (party_writer, party_events, name)])
        for record in node_records:
            self.state = apply_node(self.state, record.event)
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
        self.send(gather.reply_to, m.NodeStatus(self.state.node_id, self.state.selected_relay, parties,
                                                complete=not gather.waiting))
