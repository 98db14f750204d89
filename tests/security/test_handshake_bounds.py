"""Finding 7 (part): connections still in their handshake are bounded per source address.

One address held 3,300 connections that never finished their handshake, and honest logins
timed out. Now at most ``max_handshakes_per_address`` of one address wait at once; the rest
are closed at accept, and other addresses log in as usual.
"""

from __future__ import annotations

import asyncio
import socket

from tests.control.helpers import logged_in, running

ATTACKER = "127.0.0.2"  # another source address on loopback


def test_connections_in_their_handshake_are_bounded_per_address() -> None:
    async def scenario() -> tuple[int, int, dict[str, int]]:
        async with running() as server:
            limit = getattr(server.config, "max_handshakes_per_address", 16)
            sockets = []
            for _ in range(limit + 24):
                sock = socket.socket()
                sock.bind((ATTACKER, 0))
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
                sockets.append(sock)
            await asyncio.sleep(0.5)
            closed = 0
            for sock in sockets:
                try:
                    closed += sock.recv(1) == b""
                except BlockingIOError:
                    pass  # still open, waiting for its handshake
                except ConnectionResetError:
                    closed += 1
            honest = await logged_in(server.port, "honest")  # another address: welcomed at once
            await honest.ws.close()
            for sock in sockets:
                sock.close()
            await asyncio.sleep(0.5)
            return limit, closed, dict(getattr(server, "_handshaking", {"not counted": 1}))
    limit, closed, left = asyncio.run(scenario())
    assert closed == 24, (limit, closed)
    assert left == {}  # every one counted was released
