"""Test peers that speak to a relay from a plain UDP socket (the proxy's job, done by hand)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from mesh.relay import wire
from mesh.relay.server import Counters, RelayServer
from mesh.relay.tickets import RelayTicket

SECRET = b"0123456789abcdef-test-secret"


def wg_packet(seq: int, size: int = 96) -> bytes:
    """A datagram shaped like a WireGuard transport message (type 4, 32 + 16n bytes)."""
    assert size >= 32 and size % 16 == 0
    return b"\x04\0\0\0" + seq.to_bytes(12, "big") + b"x" * (size - 16)


def hello_bytes(ticket: RelayTicket, kind: int = wire.HELLO, nonce: bytes | None = None,
                timestamp_ms: int | None = None, key: bytes | None = None,
                cookie: bytes = wire.NO_COOKIE) -> bytes:
    return wire.encode_hello(kind, key or ticket.key, ticket.side, ticket.expiry_s,
                             int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
                             nonce or os.urandom(16), ticket.session_id, ticket.party_id, ticket.peer_a,
                             ticket.peer_b, cookie)


class Peer:
    """One side of a session: authenticates its own socket, then sends and receives WG packets."""

    def __init__(self, relay: RelayServer) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(1.0)
        self.relay = ("127.0.0.1", relay.address[1])
        self.cookie = wire.NO_COOKIE

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.relay)

    def hello(self, ticket: RelayTicket, **kwargs: object) -> bytes:
        """A HELLO and its answer; a COOKIE answer is echoed once in a fresh HELLO, as the proxy does."""
        self.send(hello_bytes(ticket, **kwargs))  # type: ignore[arg-type]
        answer = self.recv_control()
        cookie = wire.parse_cookie(answer)
        if cookie is None:
            return answer
        self.cookie = cookie[1]
        kwargs.pop("nonce", None)
        self.send(hello_bytes(ticket, cookie=cookie[1], **kwargs))  # type: ignore[arg-type]
        return self.recv_control()

    def recv_control(self) -> bytes:
        while True:
            data = self.sock.recv(2048)
            if wire.is_control(data):
                return data

    def drain(self, quiet_s: float = 0.2) -> list[bytes]:
        got: list[bytes] = []
        self.sock.settimeout(quiet_s)
        try:
            while True:
                got.append(self.sock.recv(65535))
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(1.0)
        return got

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def counters_when(relay: RelayServer, predicate: Callable[[Counters], bool],
                  timeout_s: float = 3.0) -> Counters:
    wait_for(lambda: predicate(relay.counters()), timeout_s)
    return relay.counters()
