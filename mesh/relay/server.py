"""The UDP relay server: forwards WireGuard packets between the two bound addresses of a session.

One thread runs a tight blocking ``recvfrom``/``sendto`` loop (asyncio's per-datagram
callbacks cost about three times as much per packet here, see docs/nat-relay.md); it
owns every piece of forwarding state, so the hot path takes no lock. Housekeeping
(counter flush, idle expiry, samples) runs inside that loop every few thousand packets
or when the socket is idle. Events go to a writer thread through a queue, so a slow
store never stalls forwarding.

Never an open relay: a datagram is forwarded only when its source address was bound
to one side of a session by a valid HELLO that echoed the cookie the relay sent to that
address (return routability), only if it is shaped like a WireGuard message, and only
to the address bound to the other side of that same session. Sessions end at their
ticket's expiry and when the control server revokes them; every piece of state a
stranger or a ticket holder can make the relay keep is capped.
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
import os
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Protocol

from events.base import Event
from events.streams import relay_server_stream
from events.types import (
    RelayCountersSampled,
    RelayServerStarted,
    RelayServerStopped,
    RelaySessionAllocated,
    RelaySessionExpired,
)
from mesh.relay import batch, wire
from mesh.relay.tickets import revoke_key, side_key

Address = tuple[str, int]


class EventSink(Protocol):
    """The part of store.base.Recorder the relay needs."""

    def append(self, stream_id: str, events: Sequence[Any], expected_position: int) -> Any: ...

    def stream_position(self, stream_id: str) -> int: ...


@dataclass(frozen=True)
class RelayConfig:
    session_pps: float = 20_000.0  # token bucket rate per session
    session_burst: float = 2_000.0
    idle_timeout_s: float = 120.0  # WireGuard's 25 s keepalive keeps a live session well inside this
    hello_window_s: float = 30.0  # a HELLO's timestamp must be this close to the relay's clock
    sample_interval_s: float = 10.0
    housekeeping_s: float = 0.1
    socket_buffer: int = 8 * 1024 * 1024
    batched: bool = True  # recvmmsg/sendmmsg through ctypes where available (mesh/relay/batch.py)
    # A peer relays at most to every other member of its parties; 64 covers a full LAN party
    # many times over, and stops one ticket holder from filling the relay.
    max_sessions_per_peer: int = 64
    max_sessions: int = 50_000  # ~200 bytes of state each: about 10 MB, whatever the traffic
    # The proxy says HELLO every 10 s from two sides, plus the cookie round: 12 a minute.
    # 64 per session per nonce window bounds the nonce memory at max_sessions * 64 entries.
    max_hellos_per_session: int = 64
    # Answers (PONG, COOKIE, REFUSED) to sources that may be forged: never more than this
    # many a second in total, nor per source address, so the relay is no reflector.
    reply_pps: float = 5_000.0
    replies_per_source_per_s: int = 100
    cookie_window_s: float = 60.0  # a cookie is valid in its window and the next one
    max_revoked: int = 100_000  # revoked session ids kept until their ticket expiry


@dataclass
class Counters:
    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    dropped_unauthenticated: int = 0
    dropped_rate_limited: int = 0
    dropped_malformed: int = 0
    dropped_no_peer: int = 0
    hellos_accepted: int = 0
    hellos_refused: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    cookies_sent: int = 0
    replies_suppressed: int = 0  # answers not sent because of the reply rate limit
    revocations: int = 0

    def copy(self) -> Counters:
        return Counters(**{**self.__dict__, "hellos_refused": dict(self.hellos_refused)})


class _Session:
    __slots__ = ("addrs", "bytes", "counted", "expiry_s", "last_active", "nonces", "packets", "party_id",
                 "peer_a", "peer_b", "raw", "seen_packets", "session_id", "stamp", "tokens")

    def __init__(self, hello: wire.Hello, burst: float, now: float) -> None:
        self.session_id = hello.session_id
        self.party_id = hello.party_id
        self.peer_a = hello.peer_a
        self.peer_b = hello.peer_b
        self.expiry_s = hello.expiry_s
        self.addrs: list[Address | None] = [None, None]
        # Which sides' peers the session counts against (a side counts once it has bound): a
        # member holding sessions "with" a victim that never bound them uses up its own cap only.
        self.counted = [False, False]
        self.raw: list[Any] = [None, None]  # sockaddr buffers of addrs, for the batched path
        self.tokens = burst
        self.stamp = now
        self.last_active = now
        self.packets = 0
        self.seen_packets = 0
        self.bytes = 0
        self.nonces: dict[bytes, float] = {}  # accepted HELLO nonces -> when (monotonic), one window


class RelayServer:
    def __init__(self, secret: bytes, listen: Address = ("0.0.0.0", 3478), name: str | None = None,
                 recorder: EventSink | None = None, config: RelayConfig | None = None) -> None:
        if len(secret) < 16:
            raise ValueError("the relay secret must be at least 16 bytes")
        self._secret = secret
        self.config = config or RelayConfig()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tune_buffers()
        self._sock.bind(listen)
        host, port = self._sock.getsockname()[:2]
        # The forwarding socket stays blocking (a timeout costs a poll() before every recvfrom
        # and sendto); a ticker wakes the loop for housekeeping by sending itself a datagram.
        self._ticker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._ticker.bind(("127.0.0.1" if host == "0.0.0.0" else host, 0))
        self._tick_addr: Address = self._ticker.getsockname()[:2]
        self._tick_target: Address = ("127.0.0.1" if host == "0.0.0.0" else host, port)
        self.address: Address = (host, port)
        self.name = name or f"{host}:{port}"
        self._recorder = recorder
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._sessions: dict[str, _Session] = {}
        self._routes: dict[Address, tuple[_Session, int]] = {}
        self._raw_routes: dict[bytes, tuple[_Session, int]] = {}  # the same, keyed for the batched path
        use_batch = self.config.batched and batch.available()
        self._batch = batch.BatchIO(self._sock.fileno()) if use_batch else None
        self._revoke_nonces: dict[bytes, float] = {}  # only the secret's holders can add one
        self._revoked: dict[str, int] = {}  # session id -> its ticket expiry (unix s)
        self._peer_sessions: dict[str, int] = {}  # peer id -> live sessions naming it
        self._cookie_secret = os.urandom(32)  # per run: a restart asks every proxy for a new cookie
        self._revoke_key = revoke_key(secret)
        self._reply_tokens = self.config.reply_pps
        self._reply_stamp = time.monotonic()
        self._replies_by_source: dict[str, int] = {}  # this second's answers per source IP
        self._counters = Counters()  # flushed from the loop's locals; read with counters()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stop_reason = "stopped"
        self._tock = False
        self._retired_packets = 0  # forwarded by sessions that have since expired
        self._retired_bytes = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._emit(RelayServerStarted(relay=self.name))
        for target, label in ((self._forward_loop, "relay-forward"), (self._write_loop, "relay-events"),
                              (self._tick_loop, "relay-ticker")):
            thread = threading.Thread(target=target, name=label, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, reason: str = "stopped") -> None:
        if self._stopping.is_set():
            return
        self._stop_reason = reason
        self._stopping.set()
        self._tick()
        self._threads[0].join(timeout=5)
        self._events.put(None)
        self._threads[1].join(timeout=10)
        self._threads[2].join(timeout=5)
        self._sock.close()
        self._ticker.close()

    def _tick(self) -> None:
        with contextlib.suppress(OSError):
            self._ticker.sendto(b"tick", self._tick_target)

    def _tick_loop(self) -> None:
        while not self._stopping.wait(self.config.housekeeping_s):
            self._tick()

    def wait(self) -> None:
        while not self._stopping.wait(0.5):
            pass

    def __enter__(self) -> RelayServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ------------------------------------------------------------ views for tests and the CLI

    def counters(self) -> Counters:
        with self._lock:
            return self._counters.copy()

    def active_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def state_size(self) -> dict[str, int]:
        """How much per-source and per-session state the relay holds (what the caps bound)."""
        with self._lock:
            sessions = list(self._sessions.values())
        return {"sessions": len(sessions), "nonces": sum(len(s.nonces) for s in sessions),
                "revoked": len(self._revoked), "reply_sources": len(self._replies_by_source)}

    # ------------------------------------------------------------ the forwarding loop

    def _tune_buffers(self) -> None:
        size = self.config.socket_buffer
        for plain, forced in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_*BUFFORCE
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, forced, size)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, plain, size)

    def _forward_loop(self) -> None:
        monotonic = time.monotonic
        local = Counters()
        next_sample = monotonic() + self.config.sample_interval_s
        last_sample = monotonic()
        sampled = Counters()
        while True:
            try:
                if self._batch is not None:
                    self._forward_mmsg(local, self._batch)
                else:
                    self._forward_batch(local)
            except Exception as error:  # a bug must cost one datagram, never the relay
                local.dropped_malformed += 1
                print(f"relay: datagram dropped by an internal error: {error!r}", file=_stderr(), flush=True)
            now = monotonic()
            self._housekeeping(local, now)
            if now >= next_sample or self._stopping.is_set():
                self._sample(local, sampled, now - last_sample)
                sampled = local.copy()
                last_sample, next_sample = now, now + self.config.sample_interval_s
            if self._stopping.is_set():
                for session in list(self._sessions.values()):
                    self._expire(session, "relay stopped")
                self._housekeeping(local, now)
                self._emit(RelayServerStopped(relay=self.name, reason=self._stop_reason))
                return

    def _forward_batch(self, local: Counters) -> None:
        """The hot path: no clock, no float math, no lock.

        Token buckets refill in housekeeping, which runs after every ticker datagram and
        at least every 4096 datagrams.
        """
        recvfrom, sendto = self._sock.recvfrom, self._sock.sendto
        routes_get = self._routes.get
        transport = b"\x04\0\0\0"
        zeros = b"\0\0\0"
        sizes = wire.WG_SIZES  # a local name: this is the hot path
        for _ in range(4096):
            try:
                data, addr = recvfrom(65535)
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            route = routes_get(addr)
            if route is not None:
                size = len(data)
                if size >= 32 and ((data[:4] == transport and not size & 15) or (
                        sizes.get(data[0]) == size and data[1:4] == zeros)):
                    session, other = route
                    destination = session.addrs[other]
                    if destination is None:
                        local.dropped_no_peer += 1
                        continue
                    if session.tokens < 1.0:
                        local.dropped_rate_limited += 1
                        continue
                    session.tokens -= 1.0
                    try:
                        sendto(data, destination)
                    except OSError:
                        local.dropped_no_peer += 1
                        continue
                    session.packets += 1
                    session.bytes += size
                    continue
            self._control(data, addr, route is not None, local)
            if self._tock:
                self._tock = False
                return

    def _forward_mmsg(self, local: Counters, io: batch.BatchIO) -> None:
        """The hot path with up to 64 datagrams per system call; same rules as ``_forward_batch``."""
        raw_get = self._raw_routes.get
        data = io.data_view
        rx, tx, tx_iov = io.rx_u32, io.tx_u64, io.tx_iov_u64
        rx_i32 = io.rx_i32
        stride32, stride64, len_at, flags_at, iov_at = (io.stride32, io.stride64, io.len_index,
                                                        io.flags_index, io.iov_index)
        iov_addr = io.tx_iov_addr
        slot = batch.SLOT
        truncated = batch.MSG_TRUNC
        zeros = b"\0\0\0"
        sizes = wire.WG_SIZES  # a local name: this is the hot path
        for _ in range(64):
            count = io.receive()
            if count <= 0:
                if self._stopping.is_set():
                    return
                continue
            names = io.names.raw  # one copy of the 1 KiB sockaddr array: slicing bytes beats memoryviews
            queued = 0
            keep = []  # a HELLO later in this batch may replace a session's sockaddr: keep it alive
            for index in range(count):
                size = rx[index * stride32 + len_at]
                name = index * 16
                route = raw_get(names[name + 2:name + 8])
                offset = index * slot
                if route is not None and size >= 32 and not rx_i32[index * stride32 + flags_at] & truncated:
                    kind = data[offset]
                    if ((kind == 4 and not size & 15) or sizes.get(kind) == size) and \
                            data[offset + 1:offset + 4] == zeros:
                        session, other = route
                        destination = session.raw[other]
                        if destination is None:
                            local.dropped_no_peer += 1
                            continue
                        if session.tokens < 1.0:
                            local.dropped_rate_limited += 1
                            continue
                        session.tokens -= 1.0
                        keep.append(destination)
                        tx[queued * stride64] = ctypes.addressof(destination)
                        tx[queued * stride64 + iov_at] = iov_addr[index]
                        tx_iov[index * 2 + 1] = size
                        session.packets += 1
                        session.bytes += size
                        queued += 1
                        continue
                if rx_i32[index * stride32 + flags_at] & truncated:
                    local.dropped_malformed += 1
                    continue
                addr = (socket.inet_ntoa(names[name + 4:name + 8]),
                        int.from_bytes(names[name + 2:name + 4], "big"))
                self._control(bytes(data[offset:offset + size]), addr, route is not None, local)
            if queued:
                local.dropped_no_peer += io.send(queued)
            del keep
            if self._tock:
                self._tock = False
                return

    # ------------------------------------------------------------ the cold path

    def _control(self, data: bytes, addr: Address, bound: bool, local: Counters) -> None:
        if addr == self._tick_addr:
            self._tock = True
            return
        kind = wire.control_type(data)
        if kind is None:
            if not bound and wire.is_wireguard(data):
                local.dropped_unauthenticated += 1
            else:
                local.dropped_malformed += 1
            return
        if kind == wire.PING:
            if wire.parse_probe(data, wire.PING) is None:
                local.dropped_malformed += 1
                return
            local.probes += 1
            self._reply(wire.pong_for(data), addr, local)
            return
        if kind == wire.REVOKE:
            self._revoke(data, local)
            return
        if kind not in (wire.HELLO, wire.BYE):
            local.dropped_malformed += 1  # replies are never sent to a relay
            return
        hello = wire.parse_hello(data)
        if hello is None:
            local.dropped_malformed += 1
            return
        reason = self._check(hello, addr)
        if reason is not None:
            name = wire.REFUSAL_NAMES[reason]
            local.hellos_refused[name] = local.hellos_refused.get(name, 0) + 1
            self._reply(wire.encode_refused(hello.nonce, reason), addr, local)
            return
        if hello.kind == wire.HELLO:
            cookie = self._cookie(addr, hello, 0)
            if not (hmac.compare_digest(hello.cookie, cookie)
                    or hmac.compare_digest(hello.cookie, self._cookie(addr, hello, -1))):
                # Return routability: only the owner of ``addr`` sees this answer.
                local.cookies_sent += 1
                self._reply(wire.encode_cookie(hello.nonce, cookie), addr, local)
                return
            session = self._bind(hello, addr)
            if session is None:
                local.hellos_refused["limited"] = local.hellos_refused.get("limited", 0) + 1
                self._reply(wire.encode_refused(hello.nonce, wire.LIMITED), addr, local)
                return
            session.nonces[hello.nonce] = time.monotonic()
            local.hellos_accepted += 1
            peer_bound = session.addrs[1 - hello.side] is not None
            self._send(wire.encode_hello_ok(hello.nonce, hello.side, peer_bound), addr)
        else:
            session = self._sessions.get(hello.session_id)
            if session is not None:
                session.nonces[hello.nonce] = time.monotonic()
            self._unbind(hello, addr)

    def _cookie(self, addr: Address, hello: wire.Hello, window_offset: int) -> bytes:
        window = int(time.monotonic() // self.config.cookie_window_s) + window_offset
        message = f"{addr[0]}|{addr[1]}|{hello.session_id}|{hello.side}|{window}".encode()
        return hmac.new(self._cookie_secret, message, sha256).digest()[:wire.COOKIE_LEN]

    def _reply(self, data: bytes, addr: Address, local: Counters) -> None:
        """An answer to a source that may be forged: rate-limited in total and per source address."""
        sent = self._replies_by_source.get(addr[0], 0)
        if self._reply_tokens < 1.0 or sent >= self.config.replies_per_source_per_s:
            local.replies_suppressed += 1
            return
        self._reply_tokens -= 1.0
        self._replies_by_source[addr[0]] = sent + 1
        self._send(data, addr)

    def _revoke(self, data: bytes, local: Counters) -> None:
        revoke = wire.parse_revoke(data)
        if revoke is None or not wire.revoke_mac_ok(revoke, self._revoke_key):
            local.dropped_malformed += 1
            return
        now = time.time()
        if abs(revoke.timestamp_ms / 1000 - now) > self.config.hello_window_s or \
                revoke.nonce in self._revoke_nonces:
            return  # stale, or a copy of one already applied (the control server sends a few)
        self._revoke_nonces[revoke.nonce] = time.monotonic()
        if revoke.expiry_s > now and len(self._revoked) < self.config.max_revoked:
            self._revoked[revoke.session_id] = revoke.expiry_s
        local.revocations += 1
        session = self._sessions.get(revoke.session_id)
        if session is not None:
            self._expire(session, "revoked")

    def _check(self, hello: wire.Hello, addr: Address) -> int | None:
        key = side_key(self._secret, hello.session_id, hello.party_id, hello.peer_a, hello.peer_b,
                       hello.expiry_s, hello.side)
        if not wire.hello_mac_ok(hello, key):
            return wire.BAD_MAC
        now = time.time()
        if hello.expiry_s <= now:
            return wire.EXPIRED
        if abs(hello.timestamp_ms / 1000 - now) > self.config.hello_window_s:
            return wire.STALE
        if hello.peer_a == hello.peer_b:
            return wire.SELF_PAIRED
        if hello.session_id in self._revoked:
            return wire.REVOKED
        existing = self._sessions.get(hello.session_id)
        if existing is None:
            return None
        named = (hello.party_id, hello.peer_a, hello.peer_b)
        if (existing.party_id, existing.peer_a, existing.peer_b) != named:
            return wire.BAD_MAC
        if hello.nonce in existing.nonces:
            return wire.REPLAYED
        if len(existing.nonces) >= self.config.max_hellos_per_session:
            return wire.LIMITED
        if hello.kind == wire.HELLO and existing.addrs[1 - hello.side] == addr:
            return wire.SELF_PAIRED  # one address on both sides would loop packets back to itself
        return None

    def _bind(self, hello: wire.Hello, addr: Address) -> _Session | None:
        """Bind ``addr`` to the HELLO's side; None when a session cap refuses a new session."""
        now = time.monotonic()
        session = self._sessions.get(hello.session_id)
        binder = hello.peer_a if hello.side == 0 else hello.peer_b
        cap = self.config.max_sessions_per_peer
        if session is None:
            if len(self._sessions) >= self.config.max_sessions or self._peer_sessions.get(binder, 0) >= cap:
                return None
            session = _Session(hello, self.config.session_burst, now)
            with self._lock:
                self._sessions[hello.session_id] = session
            self._emit(RelaySessionAllocated(relay=self.name, session_id=session.session_id,
                                             party_id=session.party_id, peer_a=session.peer_a,
                                             peer_b=session.peer_b))
        elif not session.counted[hello.side] and self._peer_sessions.get(binder, 0) >= cap:
            return None
        if not session.counted[hello.side]:
            session.counted[hello.side] = True
            self._peer_sessions[binder] = self._peer_sessions.get(binder, 0) + 1
        previous = session.addrs[hello.side]
        if previous is not None and previous != addr:
            self._drop_route(previous)
        stale = self._routes.get(addr)
        if stale is not None and (stale[0] is not session or stale[1] != 1 - hello.side):
            self._set_side(stale[0], 1 - stale[1], None)  # this address moved to another session or side
        self._set_side(session, hello.side, addr)
        session.last_active = now
        self._routes[addr] = self._raw_routes[batch.address_key(addr)] = (session, 1 - hello.side)
        return session

    def _set_side(self, session: _Session, side: int, addr: Address | None) -> None:
        session.addrs[side] = addr
        session.raw[side] = None if addr is None else batch.sockaddr(addr)

    def _drop_route(self, addr: Address) -> None:
        self._routes.pop(addr, None)
        self._raw_routes.pop(batch.address_key(addr), None)

    def _unbind(self, hello: wire.Hello, addr: Address) -> None:
        session = self._sessions.get(hello.session_id)
        if session is None or session.addrs[hello.side] != addr:
            return
        self._set_side(session, hello.side, None)
        self._drop_route(addr)
        if session.addrs == [None, None]:
            self._expire(session, "released")

    def _expire(self, session: _Session, reason: str) -> None:
        for addr in session.addrs:
            if addr is not None:
                self._drop_route(addr)
        with self._lock:
            if self._sessions.pop(session.session_id, None) is None:
                return
        for peer, counted in zip((session.peer_a, session.peer_b), session.counted, strict=True):
            if not counted:
                continue
            left = self._peer_sessions.get(peer, 0) - 1
            if left > 0:
                self._peer_sessions[peer] = left
            else:
                self._peer_sessions.pop(peer, None)
        self._retired_packets += session.packets
        self._retired_bytes += session.bytes
        self._emit(RelaySessionExpired(relay=self.name, session_id=session.session_id, reason=reason,
                                       forwarded_packets=session.packets, forwarded_bytes=session.bytes))

    def _housekeeping(self, local: Counters, now: float) -> None:
        rate = self.config.session_pps
        cap = max(self.config.session_burst, rate * self.config.housekeeping_s * 1.5)
        packets, size = self._retired_packets, self._retired_bytes
        for session in self._sessions.values():
            session.tokens = min(cap, session.tokens + (now - session.stamp) * rate)
            session.stamp = now
            if session.packets != session.seen_packets:
                session.seen_packets = session.packets
                session.last_active = now
            packets += session.packets
            size += session.bytes
        local.forwarded_packets, local.forwarded_bytes = packets, size
        with self._lock:
            self._counters = local.copy()
        idle = self.config.idle_timeout_s
        for session in [s for s in self._sessions.values() if now - s.last_active > idle]:
            self._expire(session, "idle")
        self._reply_tokens = min(self.config.reply_pps,
                                 self._reply_tokens + (now - self._reply_stamp) * self.config.reply_pps)
        second_passed = int(now) != int(self._reply_stamp)
        self._reply_stamp = now
        if second_passed:  # the O(state) sweeps, once a second
            self._replies_by_source.clear()
            wall = time.time()
            for session in [s for s in self._sessions.values() if s.expiry_s <= wall]:
                self._expire(session, "ticket expired")
            window = self.config.hello_window_s * 2
            for session in self._sessions.values():
                if session.nonces:
                    session.nonces = {n: seen for n, seen in session.nonces.items() if now - seen <= window}
            if self._revoke_nonces:
                self._revoke_nonces = {n: seen for n, seen in self._revoke_nonces.items()
                                       if now - seen <= window}
            if self._revoked:
                self._revoked = {sid: expiry for sid, expiry in self._revoked.items() if expiry > wall}

    def _sample(self, local: Counters, before: Counters, window_s: float) -> None:
        delta = {name: getattr(local, name) - getattr(before, name)
                 for name in ("forwarded_packets", "forwarded_bytes", "dropped_unauthenticated",
                              "dropped_rate_limited", "dropped_malformed", "dropped_no_peer")}
        delta["hellos_refused"] = sum(local.hellos_refused.values()) - sum(before.hellos_refused.values())
        if not any(delta.values()) and not self._sessions:
            return  # an idle relay writes nothing
        self._emit(RelayCountersSampled(relay=self.name, window_s=round(window_s, 3),
                                        active_sessions=len(self._sessions), **delta))

    def _send(self, data: bytes, addr: Address) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendto(data, addr)

    # ------------------------------------------------------------ events

    def _emit(self, event: Event) -> None:
        self._events.put(event)

    def _write_loop(self) -> None:
        stream = relay_server_stream(self.name)
        position = self._recorder.stream_position(stream) if self._recorder is not None else 0
        while True:
            batch = [self._events.get()]
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            events = [event for event in batch if event is not None]
            if events and self._recorder is not None:
                try:
                    self._recorder.append(stream, events, position)
                    position += len(events)
                except Exception as error:  # another writer on our stream: re-read and retry once
                    position = self._recorder.stream_position(stream)
                    try:
                        self._recorder.append(stream, events, position)
                        position += len(events)
                    except Exception:
                        print(f"relay: could not record {len(events)} events: {error}", flush=True,
                              file=_stderr())
            if done:
                return


def _stderr() -> Any:
    import sys

    return sys.stderr


def load_secret(path: str | None, env: str = "LANRAGE_RELAY_SECRET", option: str = "--secret-file") -> bytes:
    """The shared relay secret, from a file (hex or raw) or the environment; ``option`` is the
    flag that names the file, for the errors."""
    if path:
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed below)
        except OSError as error:
            raise ValueError(f"{option} {path}: {error.strerror or error}") from None
        with handle:
            mode = os.fstat(handle.fileno()).st_mode
            if mode & 0o077:
                raise ValueError(f"{option}: the relay secret file {path} is readable or writable by other "
                                 f"users (mode {mode & 0o777:o}): chmod 600 {path}")
            raw = handle.read(4096).strip()
    else:
        raw = os.environ.get(env, "").encode()
    if not raw:
        raise ValueError(f"no relay secret: pass {option} or set {env}")
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        raw = bytes.fromhex(raw.decode())
    if len(raw) < 16:
        raise ValueError(f"the relay secret{f' in {path}' if path else ''} must be at least 16 bytes")
    return raw
