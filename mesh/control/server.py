"""The control server: party registry and signalling over WebSocket.

One asyncio process. The registry is a fold of the server's own event stream
(``control:<server_id>``); every change is appended first and applied after the
store acknowledged it. Presence (who is connected, their NAT type and candidates)
is soft state in memory. Each connection gets an outbox and a writer task, so a
slow node never blocks pushes to the others; the outbox is bounded in bytes and every
write in time, so a node that stops reading is dropped and its memory freed.

Nothing a stranger sends makes the server keep unbounded state: connections are
capped per source address, parties per key and per source address, members per
party, what one member has relayed to others in bytes (and a relayed frame's share of its
target's outbox), and the registry is indexed (constant-time lookups, linear replay).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from events import types as ev
from events.base import Event
from events.streams import control_stream
from mesh.control import protocol as p
from mesh.control import registry as reg
from mesh.control.identity import Challenge, Identity, IdentityError, ServerBinding, decode_key, peer_id_for
from mesh.control.secrets_hash import check_secret, hash_secret, new_secret
from mesh.control.target import ControlTarget
from mesh.relay import wire
from mesh.relay.tickets import RelayTicket, issue_tickets, revoke_key

RELAY_TICKET_MARGIN_S = 600  # a pair's session is reused until this close to its expiry
RELAY_AFFINITY_S = 30.0  # within this, both ends of a pair get the first session, whatever relay they ask
# Sessions a side reported failed, remembered per pair so that none is handed back (the
# newest few: a new session id is random, so an old one can only come back from the map).
DEAD_SESSIONS_PER_PAIR = 8
REVOKE_RESENDS_S = (0.0, 0.5, 2.0)  # a REVOKE is one UDP datagram: send it three times
# The one answer to a join of a party that does not exist, or with a wrong or missing
# secret: a stranger learns nothing about which party ids exist.
JOIN_REFUSED = "no party with this id and secret on this server"


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
    # The signal bytes one member may have the server relay to other members: a punch signal is
    # ~1 KiB, so an honest node never meets this; a member sending 64 KiB signals at the message
    # rate (3 MB/s) does, and gets rate_limited. (Accounts are bounded by their schema, ~2.5 KiB.)
    signal_bytes_per_s: float = 32 * 1024
    signal_burst_bytes: float = 256 * 1024
    # A relayed frame (a signal, an account) is queued to a member only while its outbox holds
    # less than this: the rest of the outbox stays for the server's own answers and pushes, so
    # other members' frames never make a slow reader look like one that stopped reading (and cut it).
    max_relayed_queue_bytes: int = 512 * 1024
    max_errors: int = 50
    max_refused_joins: int = 5
    # The first refused join of a source address in this window is recorded (and logged); the
    # rest are counted and recorded as one ControlJoinRefusalsCounted when the window ends (0: each
    # one is recorded).
    refusal_window_s: float = 60.0
    outbox_limit: int = 512
    # A welcome of a node in many full parties is well under 1 MiB; 2 MiB queued means the
    # node stopped reading. Dropped then, instead of holding ~32 MB per stuck session.
    outbox_max_bytes: int = 2 * 1024 * 1024
    write_timeout_s: float = 10.0  # one frame (or the close) not taken by the node in this time: dropped
    keepalive_s: float = 20.0  # WebSocket ping interval, and the time allowed for the pong
    max_connections_per_address: int = 64  # a LAN of nodes behind one NAT, with room to spare
    # TCP connections of one address not yet past their WebSocket handshake (a handshake may take
    # up to 10 s): more are closed at accept, so one address cannot hold thousands of sockets.
    max_handshakes_per_address: int = 16
    max_parties_per_key: int = 32  # memberships (created or joined) of one node key
    max_parties_per_address_per_hour: int = 60  # creations from one source address
    max_parties: int = 100_000  # in the whole registry (~1 KiB each in memory)
    # next_virtual_ip and member lookups are linear in the members: a LAN party is far smaller.
    max_members_per_party: int = 256
    relays: tuple[str, ...] = ()
    relay_key: bytes | None = field(default=None, repr=False)
    identity: Identity | None = field(default=None, repr=False)  # static key; invites pin its public half
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    fingerprint: str = ""  # SHA-256 hex of the TLS certificate (mesh.control.target.server_tls)
    public_urls: tuple[str, ...] = ()  # URLs nodes dial when that is not a local address and port
    # Accounts (a member's word about its own side) kept for an offline member: the last few
    # of each sender, and a cap a member (~2 KiB each at most), so a chatty member fills nothing.
    accounts_per_pair: int = 4
    accounts_per_member: int = 64


@dataclass(eq=False)
class Session:
    ws: ServerConnection
    opened: float
    last_seen: float
    outbox: asyncio.Queue[tuple[str, Any]]
    outbox_limit: int
    outbox_max_bytes: int = 2 * 1024 * 1024
    address: str = ""
    queued_bytes: int = 0
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
    signal_tokens: float = 0.0
    signal_token_time: float = 0.0
    relays_refused: int = 0  # frames of this member not relayed (its budget, or a busy target)
    closing: bool = False

    def send(self, frame: str) -> None:
        if self.closing:
            return
        if self.outbox.qsize() >= self.outbox_limit or self.queued_bytes + len(frame) > self.outbox_max_bytes:
            logger.warning("dropping a node at {} that does not read: {} bytes queued", self.address,
                           self.queued_bytes)
            self.abort()
            return
        self.queued_bytes += len(frame)
        self.outbox.put_nowait(("send", frame))

    def abort(self) -> None:
        """Drop the connection now, without a close handshake the node would not read either."""
        self.closing = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.queued_bytes = 0
        self.outbox.put_nowait(("stop", None))
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

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

    def allow_signal(self, now: float, size: int, rate: float, burst: float) -> bool:
        """Whether this member may have ``size`` more signal bytes relayed to another member now."""
        self.signal_tokens = min(burst, self.signal_tokens + (now - self.signal_token_time) * rate)
        self.signal_token_time = now
        if self.signal_tokens < size:
            return False
        self.signal_tokens -= size
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
        self._accounts: dict[str, list[dict[str, Any]]] = {}  # member -> accounts that wait for it
        self._last_heard: dict[str, float] = {}  # offline member -> unix time of its last frame
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._relay_key = self.config.relay_key or secrets.token_bytes(32)
        self._relay_sessions: dict[tuple[str, str, str], tuple[float, tuple[RelayTicket, RelayTicket]]] = {}
        self._dead_sessions: dict[tuple[str, str, str], deque[str]] = {}
        self.identity = self.config.identity or Identity.generate()
        self._authorities: frozenset[str] = frozenset()
        self._per_address: dict[str, int] = {}  # open connections per source address
        self._handshaking: dict[str, int] = {}  # accepted TCP connections not yet handled, per address
        self._refusals: dict[str, tuple[float, int]] = {}  # address -> (window start, refusals counted)
        self._created_by_address: dict[str, deque[float]] = {}  # party creations in the last hour
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setblocking(False)
        # Static devices each member routes for, per (party, member): soft state like presence
        # (the member announces them again after a restart of either side), kept while the
        # member is offline so their addresses stay reserved; bounded by p.MAX_DEVICES a member.
        self._devices: dict[str, dict[str, tuple[p.AnnouncedDevice, ...]]] = {}  # party -> member -> devices

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
            ping_interval=self.config.keepalive_s, ping_timeout=self.config.keepalive_s,
            close_timeout=self.config.write_timeout_s, max_queue=64, logger=None,
            server_header="lanrage-control", ssl=self.config.tls, process_request=self._admit_connection,
            create_connection=_bounded_connection(self))
        self._authorities = self._own_authorities(host, self.port)
        self._sweeper = asyncio.create_task(self._sweep())
        logger.info("control server {} listening on {}:{} with {} parties", self.config.server_id, host,
                    self.port, len(self._registry))
        return self.port

    @property
    def server_key(self) -> str:
        return self.identity.public_key

    def url(self, host: str) -> str:
        """The URL nodes should use for ``host``, with this server's key and certificate pinned."""
        scheme = "wss" if self.config.tls is not None else "ws"
        shown = f"[{host}]" if ":" in host else host
        return ControlTarget.parse(f"{scheme}://{shown}:{self.port}/").pinned(
            self.server_key, self.config.fingerprint or None)

    def _own_authorities(self, host: str, port: int) -> frozenset[str]:
        """The host:port a login proof may name: the addresses this server is reachable on."""
        from mesh.nat.punch import local_ipv4_addresses

        names = {"127.0.0.1", "localhost", "[::1]"}
        if host in ("", "0.0.0.0", "::"):
            names.update(local_ipv4_addresses())
        else:
            names.add(f"[{host}]" if ":" in host else host)
        own = {f"{name.lower()}:{port}" for name in names}
        own.update(ControlTarget.parse(url).authority for url in self.config.public_urls)
        return frozenset(own)

    def _admit_connection(self, connection: ServerConnection, request: Request) -> Response | None:
        address = _source(connection)
        if self._per_address.get(address, 0) >= self.config.max_connections_per_address:
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS,
                                      "too many connections from your address\n")
        return None

    def session_count(self) -> int:
        return len(self._sessions)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self._sessions):
            session.close(p.CLOSE_SERVER_STOPPING, "server stopping")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._udp.close()
        logger.info("control server {} stopped", self.config.server_id)

    # ------------------------------------------------------------ connections

    def _handshake_started(self, address: str) -> bool:
        """A TCP connection from ``address`` was accepted: whether it may go on to its handshake."""
        if self._handshaking.get(address, 0) >= self.config.max_handshakes_per_address:
            return False
        self._handshaking[address] = self._handshaking.get(address, 0) + 1
        return True

    def _handshake_ended(self, address: str) -> None:
        left = self._handshaking.get(address, 1) - 1
        if left > 0:
            self._handshaking[address] = left
        else:
            self._handshaking.pop(address, None)

    async def _handle(self, ws: ServerConnection) -> None:
        now = time.monotonic()
        address = _source(ws)
        if isinstance(ws, _BoundedConnection):
            ws.handshake_done()
        self._per_address[address] = self._per_address.get(address, 0) + 1
        session = Session(ws=ws, opened=now, last_seen=now, outbox=asyncio.Queue(),
                          outbox_limit=self.config.outbox_limit,
                          outbox_max_bytes=self.config.outbox_max_bytes, address=address,
                          tokens=self.config.rate_burst, token_time=now,
                          signal_tokens=self.config.signal_burst_bytes, signal_token_time=now)
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
            left = self._per_address.get(address, 1) - 1
            if left > 0:
                self._per_address[address] = left
            else:
                self._per_address.pop(address, None)
            await self._gone(session)
            session.outbox.put_nowait(("stop", None))
            try:
                await asyncio.wait_for(writer, timeout=self.config.write_timeout_s + 1)
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()
                session.abort()

    async def _write(self, session: Session) -> None:
        timeout = self.config.write_timeout_s
        try:
            while True:
                action, value = await session.outbox.get()
                if action == "stop":
                    return
                if action == "close":
                    code, reason = value
                    await asyncio.wait_for(session.ws.close(code, reason), timeout)
                    return
                session.queued_bytes -= len(value)
                await asyncio.wait_for(session.ws.send(value), timeout)
        except ConnectionClosed:
            return
        except TimeoutError:
            logger.warning("dropping a node at {}: a write took longer than {}s", session.address, timeout)
            session.abort()

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
        if session.relays_refused > 1:
            logger.warning("refused to relay {} frames of {} at {} in all", session.relays_refused,
                           session.peer_id or "a node", session.address)
        peer_id = session.peer_id
        if peer_id is None or self._online.get(peer_id) is not session:
            return
        del self._online[peer_id]
        now = time.monotonic()
        self._offline_since[peer_id] = now
        self._last_heard[peer_id] = time.time() - (now - session.last_seen)
        self._tell_silence(peer_id, self._last_heard[peer_id], None)
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
                self._devices_announced(session, request)
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
            case p.Account():
                self._account(session, request)

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
                               server_key=self.server_key, ephemeral=session.challenge.ephemeral_public,
                               nonce=session.challenge.nonce_text))

    def _auth(self, session: Session, request: p.Auth) -> None:
        if session.peer_id is not None:
            raise p.ProtocolError(p.BAD_MESSAGE, "already authenticated", request.id)
        challenge, public_key = session.challenge, session.public_key
        if challenge is None or public_key is None:
            raise p.ProtocolError(p.NOT_AUTHENTICATED, "send hello before auth", request.id)
        session.challenge = None  # one proof per challenge
        refusal = None
        if request.server_key != self.server_key:
            refusal = "this login was made for another control server's key"
        elif request.fingerprint != self.config.fingerprint:
            refusal = "this login was made over another TLS certificate than this server's"
        elif request.authority.lower() not in self._authorities:
            refusal = f"this login was made for {request.authority[:100]}, which is not this server"
        elif not challenge.verify(public_key, request.proof, self.identity,
                                  ServerBinding(self.server_key, self.config.fingerprint,
                                                request.authority.lower())):
            refusal = "the proof does not match the public key"
        if refusal is not None:
            logger.warning("refused a login of key {} from {}: {}", public_key, session.address, refusal)
            session.send(p.error(p.AUTH_FAILED, refusal, request.id))
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
        last_heard = self._last_heard.pop(peer_id, None)
        logger.info("peer {} ({}) authenticated", peer_id, session.name)
        session.send(p.message(
            "welcome", re=request.id, peer_id=peer_id, server_id=self.config.server_id,
            server_proof=self.identity.server_proof(public_key, request.proof),
            heartbeat_s=self.config.heartbeat_s, ttl_s=self.config.ttl_s,
            parties=[self._snapshot(party) for party in self._registry.parties_of(peer_id)],
            relays=list(self._registry.relays)))
        self._deliver_accounts(session)
        if last_heard is not None:
            self._tell_silence(peer_id, last_heard, time.time())
        self._push_update(peer_id)

    async def _create(self, session: Session, request: p.CreateParty) -> None:
        assert session.peer_id is not None and session.public_key is not None
        self._check_quota(session, request.id, creating=True)
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
            if party is None or not request.secret or not check_secret(request.secret, party.secret_hash):
                # One answer, and one recorded refusal, whether or not the party exists.
                reason = ("unknown party" if party is None else
                          "missing party secret" if not request.secret else "wrong party secret")
                window = self._refusals.get(session.address)
                if window is None or self.config.refusal_window_s <= 0:
                    self._refusals[session.address] = (time.monotonic(), 0)
                    await self._append([ev.ControlJoinRefused(party_id=request.party_id, reason=reason,
                                                              public_key=session.public_key)])
                    logger.warning("refused {} joining party {}: {}", peer_id, request.party_id, reason)
                else:
                    self._refusals[session.address] = (window[0], window[1] + 1)
                session.refused += 1
                if session.refused >= self.config.max_refused_joins:
                    session.send(p.error(p.FORBIDDEN, JOIN_REFUSED, request.id))
                    session.close(p.CLOSE_TOO_MANY_ERRORS, "too many refused joins")
                    return
                raise p.ProtocolError(p.FORBIDDEN, JOIN_REFUSED, request.id)
            joined = party.member(peer_id) is None
            if joined:
                self._check_quota(session, request.id, creating=False)
                if len(party.members) >= self.config.max_members_per_party:
                    raise p.ProtocolError(p.QUOTA, f"this party is full ({len(party.members)} members)",
                                          request.id)
                await self._append([ev.ControlMemberAdmitted(
                    party_id=party.party_id, peer_id=peer_id, public_key=session.public_key,
                    virtual_ip=reg.next_virtual_ip(party, self._reserved(party.party_id)),
                    name=session.name)])
        party = self._registry.party(request.party_id)
        assert party is not None
        session.send(p.message("party_joined", re=request.id, party=self._snapshot(party)))
        if joined:
            logger.info("peer {} joined party {}", peer_id, party.party_id)
            self._broadcast(party, p.message("peer_joined", party_id=party.party_id,
                                             member=self._member(party.member(peer_id), party.party_id)),
                            peer_id)

    async def _leave(self, session: Session, request: p.LeaveParty) -> None:
        assert session.peer_id is not None
        async with self._lock:
            party = self._member_party(request.party_id, session.peer_id, request.id)
            await self._remove(party, session.peer_id, "left")
        session.send(p.message("party_left", re=request.id, party_id=party.party_id))

    async def _remove(self, party: reg.Party, peer_id: str, reason: str) -> None:
        await self._append([ev.ControlMemberRemoved(party_id=party.party_id, peer_id=peer_id,
                                                    reason=reason)])
        self._forget_devices(party.party_id, peer_id)
        logger.info("peer {} removed from party {}: {}", peer_id, party.party_id, reason)
        self._revoke_relay_sessions(party.party_id, peer_id)
        if not self._registry.parties_of(peer_id):
            self._accounts.pop(peer_id, None)
        remaining = self._registry.party(party.party_id)
        if remaining is not None:
            self._broadcast(remaining, p.message("peer_left", party_id=party.party_id, peer_id=peer_id,
                                                 reason=reason), peer_id)

    def _devices_announced(self, session: Session, request: p.Announce) -> None:
        """Check every device a member says it routes for, then keep them (all or none)."""
        assert session.peer_id is not None
        peer_id = session.peer_id
        by_party: dict[str, list[p.AnnouncedDevice]] = {}
        seen: set[str] = set()
        for device in request.devices:
            party = self._member_party(device.party_id, peer_id, request.id)
            taken = {m.virtual_ip: m.peer_id for m in party.members}
            for holder, devices in self._devices.get(party.party_id, {}).items():
                if holder != peer_id:
                    taken.update((d.virtual_ip, d.device_id) for d in devices)
            problem = None
            try:
                inside = ipaddress.ip_address(device.virtual_ip) in ipaddress.ip_network(party.subnet)
            except ValueError:
                inside = False
            if not inside:
                problem = f"its virtual IP {device.virtual_ip} is not in {party.subnet}"
            elif device.virtual_ip in taken:
                problem = f"its virtual IP {device.virtual_ip} belongs to {taken[device.virtual_ip]}"
            elif device.device_id in seen or party.member(device.device_id) is not None:
                problem = "its id is already in the party"
            elif peer_id_for(device.public_key) != device.device_id:
                problem = "its id is not its public key's"
            if problem is not None:
                raise p.ProtocolError(p.BAD_MESSAGE, f"static device {device.device_id}: {problem}",
                                      request.id)
            seen.add(device.device_id)
            by_party.setdefault(party.party_id, []).append(device)
        for party in self._registry.parties_of(peer_id):
            self._forget_devices(party.party_id, peer_id)
        for party_id, devices in by_party.items():
            self._devices.setdefault(party_id, {})[peer_id] = tuple(devices)

    def _forget_devices(self, party_id: str, peer_id: str) -> None:
        routed = self._devices.get(party_id)
        if routed is not None:
            routed.pop(peer_id, None)
            if not routed:
                del self._devices[party_id]

    def _reserved(self, party_id: str) -> tuple[str, ...]:
        """The addresses of the party's static devices: the allocator must skip them."""
        return tuple(device.virtual_ip for devices in self._devices.get(party_id, {}).values()
                     for device in devices)

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
        frame = p.message("signal", party_id=party.party_id, payload=request.payload,
                          **{"from": session.peer_id})
        if self._relay_frame(session, target, frame, request.id):
            session.send(p.message("signal_sent", re=request.id, to=request.to))

    def _relay_frame(self, session: Session, target: Session, frame: str, request_id: str | None,
                     budgeted: bool = True) -> bool:
        """Queue a member's frame to another member, within the target's share of its outbox and
        (``budgeted``: a signal) the sender's byte budget; otherwise refuse it to the sender
        (``rate_limited``).

        Going over its own budget counts as one of the sender's bad messages (a flood ends in
        the usual close); a busy target does not (that is not the sender's doing). A refusal is
        logged once per sender connection and counted after that (the count is logged when the
        connection ends), so a flood makes one line, not one a frame.
        """
        config = self.config
        refusal, own_fault = None, False
        if target.queued_bytes + len(frame) > config.max_relayed_queue_bytes:
            refusal = f"{target.peer_id} is not reading fast enough: try again later"
        elif budgeted and not session.allow_signal(time.monotonic(), len(frame), config.signal_bytes_per_s,
                                                    config.signal_burst_bytes):
            refusal, own_fault = (f"too many signal bytes ({config.signal_bytes_per_s / 1024:g} KiB/s, "
                                  f"burst {config.signal_burst_bytes / 1024:g} KiB): slow down"), True
        if refusal is None:
            target.send(frame)
            return True
        session.relays_refused += 1
        if session.relays_refused == 1:
            logger.warning("not relaying a {}-byte frame of {} to {}: {}", len(frame), session.peer_id,
                           target.peer_id, refusal)
        if own_fault:
            raise p.ProtocolError(p.RATE_LIMITED, refusal, request_id)
        session.send(p.error(p.RATE_LIMITED, refusal, request_id))
        return False

    def _account(self, session: Session, request: p.Account) -> None:
        """A member's account of its own side, to another member: now, or when it is back online.

        The sender is the authenticated key, never a field of the message. Undelivered accounts
        wait in memory, a few per pair and member, and go when the member next logs in.
        """
        assert session.peer_id is not None
        if request.to == session.peer_id:
            raise p.ProtocolError(p.BAD_MESSAGE, "an account goes to another member", request.id)
        party = self._member_party(request.party_id, session.peer_id, request.id)
        if party.member(request.to) is None:
            raise p.ProtocolError(p.NOT_MEMBER, f"{request.to} is not a member of party {party.party_id}",
                                  request.id)
        body = {"party_id": party.party_id, "from": session.peer_id,
                "items": [item.model_dump() for item in request.items]}
        target = self._online.get(request.to)
        if target is not None:
            frame = p.message("account", **body)
            if not self._relay_frame(session, target, frame, request.id, budgeted=False):
                return
        else:
            waiting = self._accounts.setdefault(request.to, [])
            mine = [w for w in waiting if (w["party_id"], w["from"]) == (body["party_id"], body["from"])]
            if len(mine) >= self.config.accounts_per_pair:
                waiting.remove(mine[0])  # the oldest of this pair makes room
            if len(waiting) >= self.config.accounts_per_member:
                waiting.pop(0)
            waiting.append(body)
        session.send(p.message("account_sent", re=request.id, to=request.to, queued=target is None))

    def _tell_silence(self, peer_id: str, last_heard: float, back_at: float | None) -> None:
        """The server's own word on a member it lost: when it last heard it, and when it was back.

        Pushed as an ``account`` marked ``by: server`` to the other online members of its
        parties (a member's own accounts never carry ``by``: the server builds those too).
        """
        item = {"kind": "offline", "started_at": round(last_heard, 3),
                "ended_at": None if back_at is None else round(back_at, 3),
                "detail": "the control server heard nothing from it from the start"
                          + (" until it logged in again" if back_at is not None else "")}
        for party in self._registry.parties_of(peer_id):
            self._broadcast(party, p.message("account", party_id=party.party_id, by="server", items=[item],
                                             **{"from": peer_id}), peer_id)

    def _deliver_accounts(self, session: Session) -> None:
        assert session.peer_id is not None
        for body in self._accounts.pop(session.peer_id, []):
            party = self._registry.party(body["party_id"])
            if party is not None and party.member(session.peer_id) is not None \
                    and party.member(body["from"]) is not None:
                session.send(p.message("account", **body))

    def _relay(self, session: Session, request: p.RelayRequest) -> None:
        assert session.peer_id is not None
        if request.to == session.peer_id:
            raise p.ProtocolError(p.BAD_MESSAGE, "a relay session joins two different peers", request.id)
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
        mine, theirs = self._tickets_for(party.party_id, session.peer_id, request.to, relay,
                                         request.failed_session)
        target = self._online.get(request.to)
        if target is not None:
            target.send(p.message("relay_offer", ticket=asdict(theirs), **{"from": session.peer_id}))
        session.send(p.message("relay_offer", re=request.id, ticket=asdict(mine),
                               delivered=target is not None))

    def _tickets_for(self, party_id: str, me: str, other: str, relay: str,
                     failed_session: str | None = None) -> tuple[RelayTicket, RelayTicket]:
        """(mine, theirs). Both ends of a pair must meet on one session of one relay.

        Each side's relay monitor may prefer a different relay, and both ask at about the
        same time: a pair's session is reused whoever asks, on the relay it was issued
        on, unless it is near its expiry, or older than ``RELAY_AFFINITY_S`` and the asker
        now wants another relay (a deliberate switch away from a degraded one), or a side
        reported it failed: such a session is never handed back, whatever the affinity.
        The other side, reporting the same failure later, gets the new session.
        """
        first, second = sorted((me, other))
        key = (party_id, first, second)
        now = time.time()
        if failed_session is not None:
            dead = self._dead_sessions.setdefault(key, deque(maxlen=DEAD_SESSIONS_PER_PAIR))
            if failed_session not in dead:
                dead.append(failed_session)
        entry = self._relay_sessions.get(key)
        if entry is not None:
            issued, pair = entry
            stale = pair[0].expiry_s - now < RELAY_TICKET_MARGIN_S
            switching = pair[0].relay != relay and now - issued > RELAY_AFFINITY_S
            reported = pair[0].session_id in self._dead_sessions.get(key, ())
            if stale or switching or reported:
                entry = None
        if entry is None:
            entry = (now, issue_tickets(self._relay_key, relay, party_id, first, second))
            self._relay_sessions[key] = entry
        pair = entry[1]
        return (pair[0], pair[1]) if pair[0].local_peer == me else (pair[1], pair[0])

    def _revoke_relay_sessions(self, party_id: str, peer_id: str) -> None:
        """A member left: end every relay session it holds in that party, on its relay."""
        for pair_key in [key for key in self._dead_sessions if key[0] == party_id and peer_id in key[1:]]:
            del self._dead_sessions[pair_key]
        gone = [key for key in self._relay_sessions if key[0] == party_id and peer_id in key[1:]]
        key = revoke_key(self._relay_key)
        loop = asyncio.get_running_loop()
        for pair_key in gone:
            ticket = self._relay_sessions.pop(pair_key)[1][0]
            try:
                relay = ControlTarget.parse(f"ws://{ticket.relay}").authority.rpartition(":")
                address = (socket.gethostbyname(relay[0].strip("[]")), int(relay[2]))
            except (ValueError, OSError) as error:
                logger.warning("cannot revoke relay session {} on {}: {}", ticket.session_id, ticket.relay,
                               error)
                continue
            for delay in REVOKE_RESENDS_S:
                loop.call_later(delay, self._send_revoke, key, ticket, address)
            logger.info("revoked relay session {} on {}", ticket.session_id, ticket.relay)

    def _send_revoke(self, key: bytes, ticket: RelayTicket, address: tuple[str, int]) -> None:
        datagram = wire.encode_revoke(key, ticket.session_id, ticket.expiry_s, int(time.time() * 1000),
                                      secrets.token_bytes(wire.NONCE_LEN))
        try:
            self._udp.sendto(datagram, address)
        except OSError as error:
            logger.warning("could not send a revocation to relay {}: {}", ticket.relay, error)

    def _check_quota(self, session: Session, request_id: str | None, creating: bool) -> None:
        assert session.peer_id is not None
        if self._registry.memberships(session.peer_id) >= self.config.max_parties_per_key:
            raise p.ProtocolError(p.QUOTA, f"this node is already in {self.config.max_parties_per_key} "
                                           "parties: leave one first", request_id)
        if not creating:
            return
        if len(self._registry) >= self.config.max_parties:
            raise p.ProtocolError(p.QUOTA, "this server holds as many parties as it will", request_id)
        now = time.monotonic()
        recent = self._created_by_address.setdefault(session.address, deque())
        while recent and now - recent[0] > 3600:
            recent.popleft()
        if len(recent) >= self.config.max_parties_per_address_per_hour:
            raise p.ProtocolError(p.QUOTA, "too many parties created from your address in the last hour",
                                  request_id)
        recent.append(now)

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

    def _member(self, member: reg.Member | None, party_id: str) -> dict[str, Any]:
        assert member is not None
        online = self._online.get(member.peer_id)
        devices = self._devices.get(party_id, {}).get(member.peer_id, ())
        return {"peer_id": member.peer_id, "name": member.name, "public_key": member.public_key,
                "virtual_ip": member.virtual_ip, "online": online is not None,
                "nat_type": online.nat_type if online else ev.NAT_UNKNOWN,
                "candidates": list(online.candidates) if online else [],
                "devices": [device.model_dump(exclude={"party_id"}) for device in devices]}

    def _snapshot(self, party: reg.Party) -> dict[str, Any]:
        return {"party_id": party.party_id, "name": party.name, "host_peer_id": party.host_peer_id,
                "subnet": party.subnet, "members": [self._member(m, party.party_id) for m in party.members]}

    def _broadcast(self, party: reg.Party, frame: str, exclude: str | None = None) -> None:
        for member in party.members:
            if member.peer_id != exclude and (target := self._online.get(member.peer_id)) is not None:
                target.send(frame)

    def _push_update(self, peer_id: str) -> None:
        for party in self._registry.parties_of(peer_id):
            self._broadcast(party, p.message("peer_updated", party_id=party.party_id,
                                             member=self._member(party.member(peer_id), party.party_id)),
                            peer_id)

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
        ended = [(a, count) for a, (start, count) in self._refusals.items()
                 if now - start >= config.refusal_window_s]
        for address, _ in ended:
            del self._refusals[address]
        counted = [ev.ControlJoinRefusalsCounted(address=a, count=n, window_s=config.refusal_window_s)
                   for a, n in ended if n]
        if counted:
            async with self._lock:  # one writer of the server's stream at a time
                await self._append(counted)
            for event in counted:
                logger.warning("refused {} more joins from {} in {:g} s", event.count, event.address,
                               event.window_s)
        idle = [a for a, times in self._created_by_address.items() if not times or now - times[-1] > 3600]
        for address in idle:
            del self._created_by_address[address]
        expired = [pid for pid, since in self._offline_since.items()
                   if now - since > config.member_expiry_s]
        for peer_id in expired:
            del self._offline_since[peer_id]
            async with self._lock:
                for party in self._registry.parties_of(peer_id):
                    await self._remove(party, peer_id, "expired")


class _BoundedConnection(ServerConnection):
    """A connection counted against its address from accept until its handshake ends (or it does)."""

    server_bounds: ControlServer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._bounded_address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._counted = self.server_bounds._handshake_started(self._bounded_address)
        super().connection_made(transport)
        if not self._counted:
            transport.abort()  # before a byte is read: the handler sees a closed connection

    def handshake_done(self) -> None:
        if self._counted:
            self._counted = False
            self.server_bounds._handshake_ended(self._bounded_address)

    def connection_lost(self, exc: Exception | None) -> None:
        self.handshake_done()
        super().connection_lost(exc)


def _bounded_connection(server: ControlServer) -> type[ServerConnection]:
    return type("BoundedConnection", (_BoundedConnection,), {"server_bounds": server})


def _source(connection: ServerConnection) -> str:
    """The source IP address of a connection ("" when the transport does not say)."""
    try:
        return str(connection.remote_address[0])
    except (TypeError, IndexError, AttributeError):
        return ""
