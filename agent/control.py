"""The agent's control sessions: one per control plane (WebSocket server or discovery directory).

Both kinds offer ``request(kind, **fields)`` and deliver pushes and welcomes to the
agent's callbacks on the agent's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlsplit

from mesh.control import AsyncControlClient, Backoff, ControlError, Identity
from mesh.control.filemode import FileDiscovery
from mesh.control.invite import check_control_url

Message = dict[str, Any]
Callback = Callable[[str, Message], None]  # (control url, message)


class Session:
    url: str

    @property
    def invite_url(self) -> str:
        return self.url

    @property
    def connected(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...

    async def start(self) -> None: ...

    async def wait_connected(self, timeout_s: float) -> bool: ...

    async def request(self, kind: str, **fields: Any) -> Message: ...

    async def stop(self) -> None: ...


class WebSocketSession(Session):
    def __init__(self, url: str, identity: Identity, name: str, on_push: Callback, on_welcome: Callback,
                 backoff: Backoff | None = None) -> None:
        self.url = url
        self.client = AsyncControlClient(url, identity, name=name, backoff=backoff,
                                         on_push=lambda body: on_push(url, body),
                                         on_welcome=lambda body: on_welcome(url, body))
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def invite_url(self) -> str:
        """The URL with the server key and certificate this session verified: what invites carry."""
        return self.client.pinned_url

    @property
    def last_error(self) -> str | None:
        return self.client.last_error

    async def start(self) -> None:
        self._task = asyncio.create_task(self.client.run())

    async def wait_connected(self, timeout_s: float) -> bool:
        return await self.client.wait_connected(timeout_s)

    async def request(self, kind: str, **fields: Any) -> Message:
        return await self.client.request(kind, **fields)

    async def stop(self) -> None:
        await self.client.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class FileSession(Session):
    """File discovery polled on the event loop (a few small files every half second)."""

    def __init__(self, url: str, identity: Identity, name: str, on_push: Callback, on_welcome: Callback,
                 poll_s: float = 0.5) -> None:
        self.url = url
        self.discovery = FileDiscovery(Path(unquote(urlparse(url).path)), identity, name=name)
        self._on_push = on_push
        self._on_welcome = on_welcome
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return True

    @property
    def last_error(self) -> str | None:
        return None

    def adopt(self, party_id: str) -> None:
        """After a restart: keep heartbeating and polling a party this node already belongs to."""
        self.discovery._parties.add(party_id)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def wait_connected(self, timeout_s: float) -> bool:
        return True

    async def request(self, kind: str, **fields: Any) -> Message:
        d = self.discovery
        calls: dict[str, Callable[[], Message]] = {
            "create_party": lambda: d.create_party(fields["name"]),
            "join_party": lambda: d.join_party(fields["party_id"], fields.get("secret", "")),
            "leave_party": lambda: d.leave_party(fields["party_id"]),
            "announce": lambda: d.announce(fields.get("nat_type", "unknown"), fields.get("candidates", [])),
            "signal": lambda: d.signal(fields["party_id"], fields["to"], fields["payload"]),
        }
        if kind not in calls:
            raise ControlError("unknown_type", f"{kind} is not available in file discovery mode")
        return await asyncio.to_thread(calls[kind])

    async def _loop(self) -> None:
        beat = 0
        while True:
            await asyncio.sleep(self._poll_s)
            beat += 1
            if beat % 5 == 0:
                await asyncio.to_thread(self.discovery.heartbeat)
            for push in await asyncio.to_thread(self.discovery.poll):
                self._on_push(self.url, push)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def confined_directory(url: str, root_url: str | None) -> Path:
    """The directory of a ``file://`` control plane, if it lies inside the one the user named.

    Invites come from anyone: without this, an invite could make the agent create or
    read directories anywhere it can write. The user names the discovery directory
    with ``serve --control file:///DIR``; every file:// plane must be inside it.
    """
    check_control_url(url)
    if not root_url or not root_url.startswith("file://"):
        raise ValueError("this node uses file discovery only inside the directory named by "
                         "--control file:///DIR, and none is configured")
    root = Path(unquote(urlsplit(root_url).path)).resolve()
    path = Path(unquote(urlsplit(url).path)).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"the discovery directory {str(path)[:200]} is outside {root}, the one this "
                         "node is configured with")
    return path


def open_session(url: str, identity: Identity, name: str, on_push: Callback,
                 on_welcome: Callback, discovery_root: str | None = None) -> Session:
    if url.startswith("file://"):
        confined_directory(url, discovery_root)
        return FileSession(url, identity, name, on_push, on_welcome)
    if url.startswith(("ws://", "wss://")):
        return WebSocketSession(url, identity, name, on_push, on_welcome)
    raise ValueError(f"control plane {url!r} is neither ws://, wss:// nor file://")
