"""A hostile control server: the real server and protocol, lying about the parties it describes.

``HostileControl`` is the project's own ``ControlServer`` whose descriptions of a party (the
``party_joined`` answer, ``welcome``, and ``peer_joined`` pushes) pass through ``lie``, keyed by
the party's name as its creator gave it: whatever a rogue server could send, over the same
WebSocket frames, with the key the invite pins. It runs on its own loop in a thread, so that the
test drives real ``serve`` processes with the blocking CLI meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mesh.control import ControlServer, Invite, ServerConfig
from mesh.control import registry as reg
from store.base import InMemoryRecorder
from tests.control.helpers import logged_in

Lie = Callable[[dict[str, Any]], dict[str, Any]]


class HostileControl(ControlServer):
    def __init__(self) -> None:
        super().__init__(InMemoryRecorder(), ServerConfig())
        self.lies: dict[str, Lie] = {}  # party name -> how its description is altered
        self.member_lies: dict[str, Lie] = {}  # member name -> how its description is altered

    def _member(self, member: reg.Member | None, party_id: str) -> dict[str, Any]:
        said = super()._member(member, party_id)
        lie = self.member_lies.get(member.name) if member is not None else None
        return lie(dict(said)) if lie else said

    def _snapshot(self, party: reg.Party) -> dict[str, Any]:
        said = super()._snapshot(party)
        lie = self.lies.get(party.name)
        return lie(dict(said)) if lie else said


class Running:
    def __init__(self, server: HostileControl, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.hosts: list[Any] = []  # the parties' creators stay online (and so members)
        self.invites: dict[str, str] = {}  # party name -> its invite

    def call(self, coroutine: Any, timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def party(self, name: str, lie: Lie | None = None, host_name: str = "host") -> str:
        """A party created on the server by another member; an invite to it, pinning the server."""
        if lie is not None:
            self.server.lies[name] = lie

        async def create() -> str:
            host = await logged_in(self.server.port, host_name)
            self.hosts.append(host)
            created = await host.call(type="create_party", name=name)
            assert created["type"] == "party_created", created
            party = created["party"]
            return Invite(self.server.url("127.0.0.1"), party["party_id"], name, created["secret"]).encode()

        self.invites[name] = str(self.call(create()))
        return self.invites[name]

    def join(self, invite: str, name: str) -> Any:
        """Another member joins the party (the server pushes ``peer_joined`` to the others)."""
        async def join() -> Any:
            decoded = Invite.decode(invite)
            member = await logged_in(self.server.port, name)
            self.hosts.append(member)
            return await member.call(type="join_party", party_id=decoded.party_id, secret=decoded.secret)

        return self.call(join())


@contextmanager
def hostile_control() -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = HostileControl()
    running = Running(server, loop)
    try:
        running.call(server.start("127.0.0.1", 0))
        yield running
    finally:
        async def close() -> None:
            for peer in running.hosts:
                await peer.ws.close()
            await server.stop()

        try:
            running.call(close(), 20)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
