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

from mesh.control import AsyncControlClient, Backoff, ControlError, ControlUnavailable, Identity
from mesh.control.filemode import FileDiscovery
from mesh.control.invite import check_control_url
from mesh.control.target import ControlTarget

Message = dict[str, Any]
Callback = Callable[[str, Message], None]  # (control url, message)
Reachability = Callable[[str, bool, str | None], None]  # (control url, reachable, error)


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


class _SharedConnection:
    """One WebSocket per control server and node key, whatever URLs name it.

    The server keeps one connection per node key (a newer one supersedes the older), so
    two sessions of one node towards one server must share it: a node that created a
    party through ``--control ws://host:port`` and joined another through an invite's
    ``ws://host:port/?key=...`` (the same server, pinned) would otherwise take turns
    superseding itself. The connection pins only the TLS certificate it was opened with
    (needed to connect); each session checks its own pins against what the server
    proved. Pushes and welcomes go to every session, each with its own URL.
    """

    def __init__(self, identity: Identity, name: str, backoff: Backoff | None,
                 on_reachability: Reachability | None = None) -> None:
        self.identity, self.name, self.backoff = identity, name, backoff
        self.on_reachability = on_reachability
        self.listeners: dict[int, tuple[str, Callback, Callback]] = {}
        self.client: AsyncControlClient | None = None
        self.task: asyncio.Task[None] | None = None
        self.open_later: ControlTarget | None = None  # the target its first session will start

    def open(self, target: ControlTarget) -> None:
        """A client for ``target``'s address and certificate pin (not its key pin: sessions check that)."""
        self.client = AsyncControlClient(target.pinned(None, target.fingerprint), self.identity,
                                         name=self.name, backoff=self.backoff,
                                         on_push=lambda body: self._fan_out(1, body),
                                         on_welcome=lambda body: self._fan_out(2, body),
                                         on_reachability=self._reachability(target.url))
        self.task = asyncio.create_task(self.client.run())

    async def close(self) -> None:
        if self.client is not None:
            await self.client.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.client, self.task = None, None

    def _reachability(self, url: str) -> Callable[[bool, str | None], None] | None:
        """Reported once for the server (not once a session), under the address it is dialed at."""
        report = self.on_reachability
        if report is None:
            return None
        return lambda reachable, error: report(url, reachable, error)

    def _fan_out(self, which: int, body: Message) -> None:
        for url, on_push, on_welcome in list(self.listeners.values()):
            (on_push if which == 1 else on_welcome)(url, body)


    def serves(self, target: ControlTarget, node_key: str) -> bool:
        """Whether this connection reaches the server ``target`` names, for the node key ``node_key``:
        the same address (whatever else the URL says: its path, query, pins), or the server key
        ``target`` pins is the one this connection's server proved. One server, one connection:
        the server keeps one per node key, and two would supersede each other for ever."""
        dialed = self.client.target if self.client is not None else self.open_later
        if self.identity.public_key != node_key or dialed is None:
            return False
        if (dialed.secure, dialed.authority) == (target.secure, target.authority):
            return True
        proven = self.client.server_key if self.client is not None else None
        return target.server_key is not None and target.server_key == (proven or dialed.server_key)


_SHARED: dict[int, _SharedConnection] = {}


class WebSocketSession(Session):
    def __init__(self, url: str, identity: Identity, name: str, on_push: Callback, on_welcome: Callback,
                 backoff: Backoff | None = None, on_reachability: Reachability | None = None) -> None:
        self.url = url
        self.target = ControlTarget.parse(url)  # a TargetError is a ValueError: the agent answers 400
        shared = next((s for s in _SHARED.values() if s.serves(self.target, identity.public_key)), None)
        if shared is None:
            shared = _SharedConnection(identity, name, backoff, on_reachability)
            shared.open_later = self.target
            _SHARED[id(shared)] = shared
        self._key = id(shared)
        self._shared = shared
        shared.listeners[id(self)] = (url, on_push, on_welcome)

    @property
    def client(self) -> AsyncControlClient:
        assert self._shared.client is not None, "start() the session first"
        return self._shared.client

    @property
    def pins_match(self) -> bool:
        """The server this connection verified is the one this session's URL pins (if it pins one)."""
        client = self.client
        return (self.target.server_key in (None, client.server_key)
                and self.target.fingerprint in (None, client.fingerprint))

    @property
    def connected(self) -> bool:
        return self._shared.client is not None and self.client.connected and self.pins_match

    @property
    def invite_url(self) -> str:
        """The URL with the server key and certificate this session verified: what invites carry."""
        return self.client.pinned_url

    @property
    def last_error(self) -> str | None:
        if self._shared.client is None:
            return None
        if self.client.connected and not self.pins_match:
            return self._pin_mismatch()
        return self.client.last_error

    def _pin_mismatch(self) -> str:
        """Which pin the server did not match, what it proved instead, and the likely cause (the
        server's key and certificate were checked as proven; only their beginnings are shown)."""
        client, target = self.client, self.target
        if target.server_key not in (None, client.server_key):
            return (f"{target.authority} proved the server key {str(client.server_key)[:12]}…, not the one "
                    f"the URL's key= pins ({target.server_key[:12]}…): check the key for a typo (an invite "
                    "copied whole carries it), or whether the server has a new key")
        return (f"{target.authority} presented the TLS certificate {str(client.fingerprint)[:12]}…, not the "
                f"one the URL's fp= pins ({str(target.fingerprint)[:12]}…): check the fingerprint for a "
                "typo, or whether the server has a new certificate")

    async def start(self) -> None:
        shared = self._shared
        wanted = self.target.fingerprint
        if shared.client is not None and not shared.client.connected and wanted and \
                shared.client.target.fingerprint != wanted:
            await shared.close()  # it cannot connect with the certificate it pinned: try this one
        if shared.client is None:
            shared.open(self.target)

    async def wait_connected(self, timeout_s: float) -> bool:
        return await self.client.wait_connected(timeout_s) and self.pins_match

    async def request(self, kind: str, **fields: Any) -> Message:
        if self.client.connected and not self.pins_match:
            raise ControlUnavailable(self.last_error or "another server")
        return await self.client.request(kind, **fields)

    async def stop(self) -> None:
        shared = self._shared
        shared.listeners.pop(id(self), None)
        if not shared.listeners:
            _SHARED.pop(self._key, None)
            await shared.close()


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
                 on_welcome: Callback, discovery_root: str | None = None,
                 on_reachability: Reachability | None = None) -> Session:
    if url.startswith("file://"):
        confined_directory(url, discovery_root)
        return FileSession(url, identity, name, on_push, on_welcome)
    if url.startswith(("ws://", "wss://")):
        return WebSocketSession(url, identity, name, on_push, on_welcome, on_reachability=on_reachability)
    raise ValueError(f"control plane {url!r} is neither ws://, wss:// nor file://")
