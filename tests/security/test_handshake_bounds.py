"""Finding 7 (part): connections still in their handshake are bounded per source address, and
refused joins are counted, not recorded one row each.

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


def test_refused_joins_are_counted_not_one_row_each() -> None:
    """A refused-join flood from one address: one ControlJoinRefused, then one count a window."""
    from events import types as ev
    from store.base import InMemoryRecorder

    async def scenario() -> list[object]:
        log = InMemoryRecorder()
        async with running(log, refusal_window_s=1.0, max_refused_joins=1000) as server:
            peers = [await logged_in(server.port, f"n{i}") for i in range(3)]
            for round_ in range(40):
                for peer in peers:
                    answer = await peer.call(type="join_party", party_id=f"p{round_}", secret="guess")
                    assert answer.get("code") == "forbidden"
            await asyncio.sleep(1.6)  # the window ends; the sweep writes its count
            for peer in peers:
                await peer.ws.close()
            assert server._registry.refused_joins == 120
        return [r.event for r in log.read_all()
                if isinstance(r.event, ev.ControlJoinRefused | ev.ControlJoinRefusalsCounted)]
    recorded = asyncio.run(scenario())
    assert len(recorded) == 2, recorded
    first, counted = recorded
    assert type(first).__name__ == "ControlJoinRefused" and first.party_id == "p0"  # type: ignore[attr-defined]
    assert (counted.address, counted.count, counted.window_s) == ("127.0.0.1", 119, 1.0)  # type: ignore[attr-defined]
