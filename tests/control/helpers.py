"""A raw protocol client for server tests: every frame visible, nothing hidden."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from mesh.control import ControlServer, ServerConfig
from mesh.control.identity import Identity, ServerBinding
from store.base import InMemoryRecorder

_ids = itertools.count(1)


class RawPeer:
    def __init__(self, ws: ClientConnection, identity: Identity, authority: str = "") -> None:
        self.ws = ws
        self.identity = identity
        self.authority = authority
        self.inbox: list[dict[str, Any]] = []

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    async def send(self, body: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(body if isinstance(body, str | bytes) else json.dumps({"v": 1, **body}))

    async def receive(self, timeout_s: float = 3.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))

    async def call(self, timeout_s: float = 3.0, **body: Any) -> dict[str, Any]:
        """Send a request and return its answer; pushes that arrive meanwhile go to ``inbox``."""
        request_id = f"t{next(_ids)}"
        await self.send({**body, "id": request_id})
        while True:
            answer = await self.receive(timeout_s)
            if answer.get("re") == request_id:
                return answer
            self.inbox.append(answer)

    async def push(self, kind: str, timeout_s: float = 3.0) -> dict[str, Any]:
        """The next push of ``kind`` (from the inbox first)."""
        for index, body in enumerate(self.inbox):
            if body["type"] == kind:
                return self.inbox.pop(index)
        while True:
            body = await self.receive(timeout_s)
            if body["type"] == kind:
                return body
            self.inbox.append(body)

    def binding(self, challenge: dict[str, Any]) -> ServerBinding:
        return ServerBinding(challenge["server_key"], "", self.authority)

    async def auth(self, challenge: dict[str, Any], identity: Identity | None = None,
                   binding: ServerBinding | None = None) -> dict[str, Any]:
        """Answer ``challenge`` with the proof of ``identity`` (ours by default) for ``binding``."""
        binding = binding or self.binding(challenge)
        proof = (identity or self.identity).prove(challenge["ephemeral"], challenge["nonce"], binding)
        return await self.call(type="auth", proof=proof, server_key=binding.server_key,
                               authority=binding.authority, fingerprint=binding.fingerprint)

    async def login(self, name: str = "node") -> dict[str, Any]:
        challenge = await self.call(type="hello", public_key=self.identity.public_key, name=name)
        assert challenge["type"] == "challenge", challenge
        return await self.auth(challenge)


async def open_peer(port: int, identity: Identity | None = None) -> RawPeer:
    ws = await connect(f"ws://127.0.0.1:{port}", proxy=None, compression=None, ping_interval=None,
                       max_size=None)
    return RawPeer(ws, identity or Identity.generate(), f"127.0.0.1:{port}")


async def logged_in(port: int, name: str = "node", identity: Identity | None = None) -> RawPeer:
    peer = await open_peer(port, identity)
    welcome = await peer.login(name)
    assert welcome["type"] == "welcome", welcome
    return peer


@asynccontextmanager
async def running(log: Any | None = None, **config: Any) -> AsyncIterator[ControlServer]:
    port = int(config.pop("port", 0))
    server = ControlServer(log if log is not None else InMemoryRecorder(), ServerConfig(**config))
    await server.start("127.0.0.1", port)
    try:
        yield server
    finally:
        await server.stop()
