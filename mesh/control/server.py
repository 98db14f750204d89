"""The control server: party registry and signalling over WebSocket.

One asyncio process. The registry is a fold of the server's own event stream
(``control:<server_id>``); every change is appended first and applied after the
store acknowledged it. Presence (who is connected, their NAT type and candidates)
is soft state in memory. Each connection gets an outbox and a writer task, so a
slow node never blocks pushes to the others.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from events import types as ev
from events.base import Event
from events.streams import control_stream
from mesh.control import protocol as p
from mesh.control import registry as reg
from mesh.control.identity import Challenge, IdentityError, decode_key, peer_id_for
from mesh.control.secrets_hash import check_secret, hash_secret, new_secret
from mesh.relay.tickets import RelayTicket, issue_tickets

RELAY_TICKET_MARGIN_S = 600  # a pair's session is reused until this close to its expiry
RELAY_AFFINITY_S = 30.0  # within this, both ends of a pair get the first session, whatever relay they ask


class EventLog(Protocol):
    """What the server needs of an event store (``store.open_store`` gives one)."""

    def append(self, stream_id: str, events: Sequence[Event], expected_position: int) -> Any: ...

    def read_stream(self, stream_id: str, from_position: int = 1) -> Sequence[Any]: ...


@dataclass(frozen=True)
class ServerConfig:
    server_id: str = "default"
    heartbeat_s: float = 10.0
    ttl_s: float = 30.0
    member_expiry_s: float = 24 * 3600.0
    auth_timeout_s: float = 10.0
    sweep_s: float = 0.5
    max_message_bytes: int = p.MAX_MESSAGE_BYTES
    rate_per_s: float = 50.0
    rate_burst: float = 200.0
    max_errors: int = 50
    max_refused_joins: int = 5
    outbox_limit: int = 512
    relays: tuple[str, ...] = ()
    relay_key: bytes | None = field(default=None, repr=False)


@dataclass(eq=False)
class Session:
    ws: ServerConnection
    opened: float
    last_seen: float
    outbox: asyncio.Queue[tuple[str, Any]]
    outbox_limit: int
    peer_id: str | None = None
    public_key: str | None = None
    name: str = "node"
    challenge: Challenge | None = field(default=None, repr=False)
    nat_type: str = ev.NAT_UNKNOWN
    candidates: tuple[str, ...] = ()
    errors: int = 0
    refused: int = 0
    tokens: float = 0.0
    token_time: float = 0.0
    closing: bool = False

    def send(self, frame: str) -> None:
        if self.closing:
            return
        if self.outbox.qsize() >= self.outbox_limit:
            self.close(1008, "outbox full: reading too slowly")
            return
        self.outbox.put_nowait(("send", frame))

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        # The close goes after everything already queued, so an error reply arrives first.
        self.outbox.put_nowait(("close", (code, reason)))

    def allow(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.token_time) * rate)
        self.token_time = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ControlServer:
    def __init__(self, log: EventLog, config: ServerConfig | None = None) -> None:
        self._log = log
        self.config = config or ServerConfig()
        self._stream = control_stream(self.config.server_id)
        self._registry = reg.Registry()
        self._position = 0
        self._lock = asyncio.Lock()
        self._sessions: set[Session] = set()
        self._online: dict[str, Session] = {}
        self._offline_since: dict[str, float] = {}
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._relay_key = self.config.relay_key or secrets.token_bytes(32)
        self._relay_sessions: dict[tuple[str, str, str], tuple[float, tuple[RelayTicket, RelayTicket]]] = {}

    # ------------------------------------------------------------ lifecycle

    @property
    def registry(self) -> reg.Registry:
        return self._registry

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def start(self, host: str = "0.0.0.0", port: int = 8667) -> int:
        records = await asyncio.to_thread(self._log.read_stream, self._stream)
        self._registry = reg.fold(record.event for record in records)
        self._position = len(records)
        new_relays = [r for r in self.config.relays if r not in self._registry.relays]
        if new_relays:
            await self._append([ev.ControlRelayRegistered(relay=r) for r in new_relays])
        now = time.monotonic()
        for _, party in self._registry.parties:
            for member in party.members:
                self._offline_since.setdefault(member.peer_id, now)
        self._server = await serve(
            self._handle, host, port, max_size=p.MAX_FRAME_BYTES, compression=None,
            ping_interval=None, max_queue=64, logger=None, server_header="lanrage-control")
        self._sweeper = asyncio.create_task(self._sweep())
        logger.info("control server {} listening on {}:{} with {} parties", self.config.server_id, host,
                    self.port, len(self._registry.parties))
        return self.port

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self._sessions):
            session.close(p.CLOSE_SERVER_STOPPING, "server stopping")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        logger.info("control server {} stopped", self.config.server_id)

    # ------------------------------------------------------------ connections

    async def _handle(self, ws: ServerConnection) -> None:
        now = time.monotonic()
        session = Session(ws=ws, opened=now, last_seen=now, outbox=asyncio.Queue(),
                          outbox_limit=self.config.outbox_limit,
                          tokens=self.config.rate_burst, token_time=now)
        self._sessions.add(session)
        writer = asyncio.create_task(self._write(session))
        try:
            async for frame in ws:
                await self._receive(session, frame)
                if session.closing:
                    break
        except ConnectionClosed:
            pass
        finally:
            await self._gone(session)
            session.outbox.put_nowait(("stop", None))
            try:
                await asyncio.wait_for(writer, timeout=2.0)
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()

    async def _write(self, session: Session) -> None:
        try:
            while True:
                action, value = await session.outbox.get()
                if action == "stop":
                    return
                if action == "close":
                    code, reason = value
                    await session.ws.close(code, reason)
                    return
                await session.ws.send(value)
        except ConnectionClosed:
            return

    async def _receive(self, session: Session, frame: str | bytes) -> None:
        now = time.monotonic()
        session.last_seen = now
        if not session.allow(now, self.config.rate_per_s, self.config.rate_burst):
            session.send(p.error(p.RATE_LIMITED, "too many messages: slow down"))
            return
        try:
            request = p.parse_request(frame, self.config.max_message_bytes)
            await self._dispatch(session, request)
        except p.ProtocolError as refusal:
            session.errors += 1
            session.send(p.error(refusal.code, refusal.message, refusal.request_id))
            if session.errors > self.config.max_errors:
                session.close(p.CLOSE_TOO_MANY_ERRORS, "too many bad messages")
        except Exception:
            logger.exception("control server failed on a {} message", type(frame).__name__)
            session.send(p.error(p.INTERNAL, "the server failed on this message; it keeps serving"))

    async def _gone(self, session: Session) -> None:
        session.closing = True
        self._sessions.discard(session)
        peer_id = session.peer_id
        if peer_id is None or self._online.get(peer_id) is not session:
            return
        del self._online[peer_id]
        self._offline_since[peer_id] = time.monotonic()
        logger.info("peer {} went offline", peer_id)
        self._push_update(peer_id)

    # ------------------------------------------------------------ dispatch

    async def _dispatch(self, session: Session, request: Any) -> None:
        if isinstance(request, p.Hello):
            return self._hello(session, request)
        if isinstance(request, p.Auth):
            return self._auth(session, request)
        if session.peer_id is None:
            raise p.ProtocolError(p.NOT_AUTHENTICATED, "authenticate first: send hello, then auth",
                                  request.id)
        match request:
            case p.CreateParty():
                await self._create(session, request)
            case p.JoinParty():
                await self._join(session, request)
            case p.LeaveParty():
                await self._leave(session, request)
            case p.Heartbeat():
                session.send(p.message("heartbeat_ack", re=request.id, ttl_s=self.config.ttl_s))
            case p.Announce():
                session.nat_type = request.nat_type
                session.candidates = tuple(request.candidates)
                session.send(p.message("announced", re=request.id))
                self._push_update(session.peer_id)
            case p.Signal():
                self._signal(session, request)
            case p.RelayRequest():
                self._relay(session, request)
            case p.ListRelays():
                session.send(p.message("relays", re=request.id, relays=list(self._registry.relays)))

    def _hello(self, session: Session, request: p.Hello) -> None:
        if session.peer_id is not None:
            raise p.ProtocolError(p.BAD_MESSAGE, "already authenticated", request.id)
        try:
            decode_key(request.public_key)
        except IdentityError as error:
            raise p.ProtocolError(p.BAD_MESSAGE, str(error), request.id) from None
        session.public_key = request.public_key
        session.name = request.name
        session.challenge = Challenge.new()
        session.send(p.message("challenge", re=request.id, server_id=self.config.server_id,
                               ephemeral=session.challenge.ephemeral_public,
                               nonce=session.challenge.nonce_text))

    def _auth(self, session: Session, request: p.Auth) -> None:
        if session.peer_id is not None:
            raise p.ProtocolError(p.BAD_MESSAGE, "already authenticated", request.id)
        challenge, public_key = session.challenge, session.public_key
        if challenge is None or public_key is None:
            raise p.ProtocolError(p.NOT_AUTHENTICATED, "send hello before auth", request.id)
        session.challenge = None  # one proof per challenge
        if not challenge.verify(public_key, request.proof):
            logger.warning("refused a node that could not prove its key {}", public_key)
            session.send(p.error(p.AUTH_FAILED, "the proof does not match the public key", request.id))
            session.close(p.CLOSE_AUTH_FAILED, "authentication failed")
            return
        peer_id = peer_id_for(public_key)
        previous = self._online.get(peer_id)
        if previous is not None and previous is not session:
            # Only the key's holder could prove it, so this is the node itself, reconnecting
            # before the server noticed its old connection had died.
            previous.peer_id = None
            previous.close(p.CLOSE_SUPERSEDED, "superseded by a newer connection of this node")
        session.peer_id = peer_id
        self._online[peer_id] = session
        self._offline_since.pop(peer_id, None)
        logger.info("peer {} ({}) authenticated", peer_id, session.name)
        session.send(p.message(
            "welcome", re=request.id, peer_id=peer_id, server_id=self.config.server_id,
            heartbeat_s=self.config.heartbeat_s, ttl_s=self.config.ttl_s,
            parties=[self._snapshot(party) for party in self._registry.parties_of(peer_id)],
            relays=list(self._registry.relays)))
        self._push_update(peer_id)

    async def _create(self, session: Session, request: p.CreateParty) -> None:
        assert session.peer_id is not None and session.public_key is not None
        secret = new_secret()
        party_id = secrets.token_hex(8)
        async with self._lock:
            await self._append([
                ev.ControlPartyRegistered(party_id=party_id, name=request.name,
                                          host_peer_id=session.peer_id, secret_hash=hash_secret(secret),
                                          subnet=reg.DEFAULT_SUBNET),
                ev.ControlMemberAdmitted(party_id=party_id, peer_id=session.peer_id,
                                         public_key=session.public_key,
                                         virtual_ip=reg.next_virtual_ip(reg.Party(party_id, "", "")),
                                         name=session.name),
            ])
        party = self._registry.party(party_id)
        assert party is not None
        logger.info("party {} ({}) created by {}", party_id, request.name, session.peer_id)
        session.send(p.message("party_created", re=request.id, party=self._snapshot(party), secret=secret))

    async def _join(self, session: Session, request: p.JoinParty) -> None:
        assert session.peer_id is not None and session.public_key is not None
        peer_id = session.peer_id
        async with self._lock:
            party = self._registry.party(request.party_id)
            if party is None:
                raise p.ProtocolError(p.NOT_FOUND, f"no party {request.party_id} on this server",
                                      request.id)
            if not request.secret or not check_secret(request.secret, party.secret_hash):
                reason = "missing party secret" if not request.secret else "wrong party secret"
                await self._append([ev.ControlJoinRefused(party_id=party.party_id, reason=reason,
                                                          public_key=session.public_key)])
                session.refused += 1
                logger.warning("refused {} joining party {}: {}", peer_id, party.party_id, reason)
                if session.refused >= self.config.max_refused_joins:
                    session.send(p.error(p.FORBIDDEN, reason, request.id))
                    session.close(p.CLOSE_TOO_MANY_ERRORS, "too many refused joins")
                    return
                raise p.ProtocolError(p.FORBIDDEN, reason, request.id)
            joined = party.member(peer_id) is None
            if joined:
                await self._append([ev.ControlMemberAdmitted(
                    party_id=party.party_id, peer_id=peer_id, public_key=session.public_key,
                    virtual_ip=reg.next_virtual_ip(party), name=session.name)])
        party = self._registry.party(request.party_id)
        assert party is not None
        session.send(p.message("party_joined", re=request.id, party=self._snapshot(party)))
        if joined:
            logger.info("peer {} joined party {}", peer_id, party.party_id)
            self._broadcast(party, p.message("peer_joined", party_id=party.party_id,
                                             member=self._member(party.member(peer_id))), peer_id)

    async def _leave(self, session: Session, request: p.LeaveParty) -> None:
        assert session.peer_id is not None
        async with self._lock:
            party = self._member_party(request.party_id, session.peer_id, request.id)
            await self._remove(party, session.peer_id, "left")
        session.send(p.message("party_left", re=request.id, party_id=party.party_id))

    async def _remove(self, party: reg.Party, peer_id: str, reason: str) -> None:
        await self._append([ev.ControlMemberRemoved(party_id=party.party_id, peer_id=peer_id,
                                                    reason=reason)])
        logger.info("peer {} removed from party {}: {}", peer_id, party.party_id, reason)
        remaining = self._registry.party(party.party_id)
        if remaining is not None:
            self._broadcast(remaining, p.message("peer_left", party_id=party.party_id, peer_id=peer_id,
                                                 reason=reason), peer_id)

    def _signal(self, session: Session, request: p.Signal) -> None:
        assert session.peer_id is not None
        party = self._member_party(request.party_id, session.peer_id, request.id)
        if party.member(request.to) is None:
            raise p.ProtocolError(p.NOT_MEMBER, f"{request.to} is not a member of party {party.party_id}",
                                  request.id)
        target = self._online.get(request.to)
        if target is None:
            raise p.ProtocolError(p.PEER_OFFLINE, f"{request.to} is not connected to the control server",
                                  request.id)
        target.send(p.message("signal", party_id=party.party_id, payload=request.payload,
                              **{"from": session.peer_id}))
        session.send(p.message("signal_sent", re=request.id, to=request.to))

    def _relay(self, session: Session, request: p.RelayRequest) -> None:
        assert session.peer_id is not None
        party = self._member_party(request.party_id, session.peer_id, request.id)
        if party.member(request.to) is None:
            raise p.ProtocolError(p.NOT_MEMBER, f"{request.to} is not a member of party {party.party_id}",
                                  request.id)
        relays = self._registry.relays
        if not relays:
            raise p.ProtocolError(p.NO_RELAY, "this control server knows no relay", request.id)
        relay = request.relay or relays[0]
        if relay not in relays:
            raise p.ProtocolError(p.NOT_FOUND, f"relay {relay[:64]} is not registered here", request.id)
        mine, theirs = self._tickets_for(party.party_id, session.peer_id, request.to, relay)
        target = self._online.get(request.to)
        if target is not None:
            target.send(p.message("relay_offer", ticket=asdict(theirs), **{"from": session.peer_id}))
        session.send(p.message("relay_offer", re=request.id, ticket=asdict(mine),
                               delivered=target is not None))

    def _tickets_for(self, party_id: str, me: str, other: str, relay: str) -> tuple[RelayTicket, RelayTicket]:
        """(mine, theirs). Both ends of a pair must meet on one session of one relay.

        Each side's relay monitor may prefer a different relay, and both ask at about the
        same time: a pair's session is reused whoever asks, on the relay it was issued
        on, unless it is near its expiry, or older than ``RELAY_AFFINITY_S`` and the asker
        now wants another relay (a deliberate switch away from a degraded one).
        """
        first, second = sorted((me, other))
        key = (party_id, first, second)
        now = time.time()
        entry = self._relay_sessions.get(key)
        if entry is not None:
            issued, pair = entry
            stale = pair[0].expiry_s - now < RELAY_TICKET_MARGIN_S
            switching = pair[0].relay != relay and now - issued > RELAY_AFFINITY_S
            if stale or switching:
                entry = None
        if entry is None:
            entry = (now, issue_tickets(self._relay_key, relay, party_id, first, second))
            self._relay_sessions[key] = entry
        pair = entry[1]
        return (pair[0], pair[1]) if pair[0].local_peer == me else (pair[1], pair[0])

    # ------------------------------------------------------------ helpers

    def _member_party(self, party_id: str, peer_id: str, request_id: str | None) -> reg.Party:
        party = self._registry.party(party_id)
        if party is None or party.member(peer_id) is None:
            raise p.ProtocolError(p.NOT_MEMBER, f"you are not a member of party {party_id}", request_id)
        return party

    async def _append(self, events: list[Event]) -> None:
        await asyncio.to_thread(self._log.append, self._stream, events, self._position)
        self._position += len(events)
        self._registry = reg.fold(events, self._registry)

    def _member(self, member: reg.Member | None) -> dict[str, Any]:
        assert member is not None
        online = self._online.get(member.peer_id)
        return {"peer_id": member.peer_id, "name": member.name, "public_key": member.public_key,
                "virtual_ip": member.virtual_ip, "online": online is not None,
                "nat_type": online.nat_type if online else ev.NAT_UNKNOWN,
                "candidates": list(online.candidates) if online else []}

    def _snapshot(self, party: reg.Party) -> dict[str, Any]:
        return {"party_id": party.party_id, "name": party.name, "host_peer_id": party.host_peer_id,
                "subnet": party.subnet, "members": [self._member(m) for m in party.members]}

    def _broadcast(self, party: reg.Party, frame: str, exclude: str | None = None) -> None:
        for member in party.members:
            if member.peer_id != exclude and (target := self._online.get(member.peer_id)) is not None:
                target.send(frame)

    def _push_update(self, peer_id: str) -> None:
        for party in self._registry.parties_of(peer_id):
            self._broadcast(party, p.message("peer_updated", party_id=party.party_id,
                                             member=self._member(party.member(peer_id))), peer_id)

    async def _sweep(self) -> None:
        config = self.config
        while True:
            await asyncio.sleep(config.sweep_s)
            try:
                await self._sweep_once(time.monotonic())
            except Exception:
                logger.exception("control server sweep failed; next sweep in {}s", config.sweep_s)

    async def _sweep_once(self, now: float) -> None:
        config = self.config
        for session in list(self._sessions):
            if session.peer_id is None and now - session.opened > config.auth_timeout_s:
                session.send(p.error(p.NOT_AUTHENTICATED, "authentication took too long"))
                session.close(p.CLOSE_AUTH_TIMEOUT, "authentication timeout")
            elif session.peer_id is not None and now - session.last_seen > config.ttl_s:
                logger.info("peer {} missed its heartbeats for {}s", session.peer_id, config.ttl_s)
                session.close(p.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
        expired = [pid for pid, since in self._offline_since.items()
                   if now - since > config.member_expiry_s]
        for peer_id in expired:
            del self._offline_since[peer_id]
            async with self._lock:
                for party in self._registry.parties_of(peer_id):
                    await self._remove(party, peer_id, "expired")
