"""The relay client: a small local UDP proxy per relay session, and the relay probe.

WireGuard's peer endpoint is set to the proxy's loopback address. The proxy's upstream
socket is its own (not WireGuard's listen port), so the relay path never competes with
direct punching for the WireGuard port, and it works behind any NAT including
symmetric ones: it is outbound-only towards a public relay. The proxy authenticates
with a HELLO (fresh nonce and timestamp, MAC'd with its side key, echoing the cookie the
relay sent to this socket's address: return routability), repeats it on an
interval so that a restarted relay or a rebound NAT mapping heals, and then moves raw
WireGuard packets both ways without any extra header. When WireGuard sends and no
WireGuard packet comes back for ``STALL_S`` (an uplink that was cut, a NAT that gave this
socket a new public port), the HELLO is repeated every ``STALL_S`` instead of every
interval: the relay learns the new address within seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from mesh.interfaces import MeshError, RelayAllocation, RelaySessionFailed
from mesh.relay import wire
from mesh.relay.tickets import RelayTicket

Address = tuple[str, int]

# WireGuard sent through the session and nothing came back for this long: say HELLO again
# (and again each STALL_S while it lasts, the interval's HELLO included). One side then
# sends at most 30 a minute, inside the relay's 64 per session and nonce window even with
# both sides stalled, and a side whose uplink or NAT mapping came back is heard within 2 s.
STALL_S = 2.0


def parse_hostport(value: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MeshError(f"{value!r} is not host:port")
    try:
        return socket.gethostbyname(host.strip("[]")), int(port)
    except OSError as error:
        raise MeshError(f"cannot resolve {host!r}: {error}") from None


class RelayRefused(RelaySessionFailed):
    def __init__(self, relay: str, session_id: str, reason: str) -> None:
        super().__init__(f"relay {relay} refused session {session_id[:16]}: {reason}", relay, session_id)
        self.reason = reason


# A session hello is answered within a round trip; a relay that has not answered in a
# second is treated as down, so that a connection moves on to the next relay quickly.
HELLO_TIMEOUT_S = 1.0

class RelayProxy:
    """One relay session: a loopback socket for WireGuard and an upstream socket to the relay."""

    def __init__(self, ticket: RelayTicket, wg_port: int | None = None, bind_host: str = "127.0.0.1",
                 rehello_s: float = 10.0, hello_timeout_s: float = HELLO_TIMEOUT_S) -> None:
        self.ticket = ticket
        self.relay_addr = parse_hostport(ticket.relay)
        self._wg_addr: Address | None = (bind_host, wg_port) if wg_port else None
        self._wg_fixed = wg_port is not None
        self._rehello_s = rehello_s
        self._hello_timeout_s = hello_timeout_s
        self._local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._local.bind((bind_host, 0))
        self._upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._upstream.bind(("0.0.0.0", 0))
        self._upstream.connect(self.relay_addr)
        self.endpoint = "{}:{}".format(*self._local.getsockname()[:2])
        self.peer_bound = False
        self.last_hello_ok: float | None = None
        self.packets_up = 0
        self.packets_down = 0
        self.stall_hellos = 0  # HELLOs sent because WireGuard's packets went unanswered
        self._pending: dict[bytes, float] = {}
        self._cookie = wire.NO_COOKIE  # the relay's return-routability cookie for our address
        self._refused: str | None = None
        self._port_closed = False  # the relay's host answered the hello with "port unreachable"
        self._ok = threading.Event()
        self._stop = threading.Event()
        self._hello_due = threading.Event()  # set by rebind(): say HELLO from the proxy thread now
        # close() writes here: the proxy thread sleeps in select until traffic, its next
        # HELLO or this (a fixed poll of 16 idle proxies cost a percent of a core).
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name=f"relay-proxy-{ticket.session_id}",
                                        daemon=True)

    def open(self) -> RelayProxy:
        """Authenticate with the relay (raises RelaySessionFailed, or its RelayRefused) and start proxying."""
        self._thread.start()
        deadline = time.monotonic() + self._hello_timeout_s
        while time.monotonic() < deadline and not self._ok.is_set() and self._refused is None \
                and not self._port_closed:
            self._hello(wire.HELLO)
            self._ok.wait(0.25)
        if self._port_closed and not self._ok.is_set():
            # A killed relay's host says so at once: no need to wait out the hello timeout.
            self.close(send_bye=False)
            raise RelaySessionFailed(f"relay {self.ticket.relay} is not running (port unreachable)",
                                     self.ticket.relay, self.ticket.session_id)
        if self._refused is not None:
            self.close(send_bye=False)
            raise RelayRefused(self.ticket.relay, self.ticket.session_id, self._refused)
        if not self._ok.is_set():
            self.close(send_bye=False)
            ticket = self.ticket
            raise RelaySessionFailed(f"relay {ticket.relay} did not answer the hello of session "
                                     f"{ticket.session_id[:16]}", ticket.relay, ticket.session_id)
        return self

    def close(self, send_bye: bool = True) -> None:
        if send_bye and self._ok.is_set():
            self._hello(wire.BYE)
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        for sock in (self._local, self._upstream, self._wake_read, self._wake_write):
            sock.close()

    def rebind(self) -> None:
        """This host's public mapping moved: say HELLO now, so the relay learns the new address
        before WireGuard's next packet (an idle tunnel sends one only every keepalive)."""
        self._hello_due.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def _hello(self, kind: int) -> None:
        nonce = os.urandom(wire.NONCE_LEN)
        ticket = self.ticket
        data = wire.encode_hello(kind, ticket.key, ticket.side, ticket.expiry_s, int(time.time() * 1000),
                                 nonce, ticket.session_id, ticket.party_id, ticket.peer_a, ticket.peer_b,
                                 self._cookie)
        now = time.monotonic()
        self._pending = {n: sent for n, sent in self._pending.items() if now - sent < 60.0}
        self._pending[nonce] = now
        with contextlib.suppress(OSError):
            self._upstream.send(data)

    def _run(self) -> None:
        local, upstream = self._local, self._upstream
        next_hello = time.monotonic() + self._rehello_s
        unanswered_since: float | None = None  # WireGuard's first packet up with none down since
        last_stall_hello = 0.0
        while not self._stop.is_set():
            deadline = next_hello
            if unanswered_since is not None:
                deadline = min(deadline, max(unanswered_since, last_stall_hello) + STALL_S)
            wait_s = max(0.0, deadline - time.monotonic()) if self._ok.is_set() else 0.25
            try:
                readable, _, _ = select.select([local, upstream, self._wake_read], [], [], wait_s)
            except (OSError, ValueError):
                return
            if self._wake_read in readable:
                if self._stop.is_set():
                    return
                with contextlib.suppress(OSError):
                    self._wake_read.recv(64)
                if self._hello_due.is_set() and self._ok.is_set():
                    self._hello_due.clear()
                    self._hello(wire.HELLO)  # the relay sends back a cookie for the new address
                    next_hello = time.monotonic() + self._rehello_s
                continue
            for sock in readable:
                try:
                    data, addr = sock.recvfrom(65535)
                except ConnectionRefusedError:
                    if sock is upstream and not self._ok.is_set():
                        self._port_closed = True  # open() sees it within its 0.25 s wait
                    continue
                except OSError:
                    continue
                if sock is local:
                    # Only WireGuard may use the session: its known port, or the first local sender.
                    if addr[0] != local.getsockname()[0] or (self._wg_fixed and addr != self._wg_addr):
                        continue
                    self._wg_addr = addr
                    if wire.is_wireguard(data):
                        self.packets_up += 1
                        if unanswered_since is None:
                            unanswered_since = time.monotonic()
                        with contextlib.suppress(OSError):
                            upstream.send(data)
                elif wire.is_control(data):
                    self._on_control(data)
                elif self._wg_addr is not None and wire.is_wireguard(data):
                    self.packets_down += 1
                    unanswered_since = None
                    with contextlib.suppress(OSError):
                        local.sendto(data, self._wg_addr)
            if not self._ok.is_set():
                continue
            now = time.monotonic()
            stalled = (unanswered_since is not None
                       and now >= max(unanswered_since, last_stall_hello) + STALL_S)
            if stalled or now >= next_hello:
                self._hello(wire.HELLO)
                next_hello = now + self._rehello_s
                if stalled:
                    last_stall_hello = now
                    self.stall_hellos += 1

    def _on_control(self, data: bytes) -> None:
        cookie = wire.parse_cookie(data)
        if cookie is not None and self._pending.pop(cookie[0], None) is not None:
            self._cookie = cookie[1]  # our address changed or the cookie aged: say HELLO again with it
            self._hello(wire.HELLO)
            return
        ok = wire.parse_hello_ok(data)
        if ok is not None and self._pending.pop(ok[0], None) is not None:
            self.peer_bound = ok[2]
            self.last_hello_ok = time.monotonic()
            self._ok.set()
            return
        refused = wire.parse_refused(data)
        if refused is not None and self._pending.pop(refused[0], None) is not None and not self._ok.is_set():
            self._refused = wire.REFUSAL_NAMES[refused[1]]


def hello_exchange(sock: socket.socket, ticket: RelayTicket, relay: Address, kind: int = wire.HELLO) -> bytes:
    """One HELLO (or BYE) from a plain UDP socket and the relay's answer, cookie round included.

    For tools and benchmarks that speak to a relay without a proxy; ``sock`` needs a timeout.
    """
    cookie = wire.NO_COOKIE
    for _ in range(2):
        sock.sendto(wire.encode_hello(kind, ticket.key, ticket.side, ticket.expiry_s, int(time.time() * 1000),
                                      os.urandom(wire.NONCE_LEN), ticket.session_id, ticket.party_id,
                                      ticket.peer_a, ticket.peer_b, cookie), relay)
        answer = sock.recv(2048)
        echoed = wire.parse_cookie(answer)
        if echoed is None:
            return answer
        cookie = echoed[1]
    return answer


def probe_relay(relay: str, timeout_s: float = 1.0) -> float | None:
    """One PING/PONG round trip to a relay in ms, None when it did not answer in time."""
    addr = parse_hostport(relay)
    probe_id = int.from_bytes(os.urandom(8), "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        start = time.perf_counter()
        deadline = start + timeout_s
        try:
            sock.send(wire.encode_ping(probe_id))
        except OSError:
            return None
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            try:
                data = sock.recv(2048)
            except (TimeoutError, OSError):
                return None
            if wire.parse_probe(data, wire.PONG) == probe_id:
                return (time.perf_counter() - start) * 1000


TicketSource = Callable[[str, str, str, str | None], RelayTicket]


class ProxyRelayClient:
    """The real ``mesh.interfaces.RelayClient``: tickets come from the control plane."""

    def __init__(self, tickets: TicketSource, wg_port: int | None = None, rehello_s: float = 10.0) -> None:
        self._tickets = tickets
        self._wg_port = wg_port
        self._rehello_s = rehello_s
        self._proxies: dict[str, RelayProxy] = {}
        self._lock = threading.Lock()

    def allocate(self, party_id: str, peer_id: str, relay: str,
                 failed_session: str | None = None) -> RelayAllocation:
        return self.allocate_ticket(self._tickets(party_id, peer_id, relay, failed_session))

    def allocate_ticket(self, ticket: RelayTicket) -> RelayAllocation:
        proxy = RelayProxy(ticket, wg_port=self._wg_port, rehello_s=self._rehello_s).open()
        with self._lock:
            old = self._proxies.pop(ticket.session_id + ticket.relay, None)
            self._proxies[ticket.session_id + ticket.relay] = proxy
        if old is not None:
            old.close()
        return RelayAllocation(relay=ticket.relay, session_id=ticket.session_id, endpoint=proxy.endpoint)

    def proxy(self, allocation: RelayAllocation) -> RelayProxy | None:
        with self._lock:
            return self._proxies.get(allocation.session_id + allocation.relay)

    def holds(self, allocation: RelayAllocation) -> bool:
        return self.proxy(allocation) is not None

    def release(self, allocation: RelayAllocation) -> None:
        with self._lock:
            proxy = self._proxies.pop(allocation.session_id + allocation.relay, None)
        if proxy is not None:
            proxy.close()

    def rebind(self) -> int:
        """Every session says HELLO again now (the host's NAT mapping moved); how many."""
        with self._lock:
            proxies = list(self._proxies.values())
        for proxy in proxies:
            proxy.rebind()
        return len(proxies)

    def close(self) -> None:
        with self._lock:
            proxies, self._proxies = list(self._proxies.values()), {}
        for proxy in proxies:
            proxy.close()

    def probe(self, relay: str, timeout_s: float) -> float | None:
        return probe_relay(relay, timeout_s)
