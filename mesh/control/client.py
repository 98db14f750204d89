"""The control client: a reconnecting WebSocket session for a node.

``AsyncControlClient`` is for asyncio code (the node agent). ``ControlClient`` runs
one in its own thread with its own event loop and offers blocking calls, for
thespian actors and plain scripts. Both reconnect with exponential backoff and
jitter, authenticate again, re-send the last ``announce``, and hand the fresh
``welcome`` (with every party this node belongs to) to ``on_welcome``, so that a
node can reconcile what it missed while the server was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import random
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from mesh.control import protocol as p
from mesh.control.identity import Identity, IdentityError, ServerBinding
from mesh.control.target import ControlTarget, TargetError, peer_fingerprint

Message = dict[str, Any]
Callback = Callable[[Message], None]
Reachability = Callable[[bool, str | None], None]  # (reachable, the error when not)
# Answers to requests the client sends on its own (heartbeats, the re-announce); not pushes.
_QUIET_REPLIES = frozenset({"heartbeat_ack", "announced"})
# The server answers every heartbeat. Nothing heard for this many intervals: the server or
# the path to it is gone (a black hole never closes TCP), so drop the connection and redial.
# Three, so one late answer under load never costs a reconnect.
SILENT_AFTER_HEARTBEATS = 3


def decode_frame(frame: str | bytes) -> Message | None:
    """A frame from the server as a JSON object; None for anything else (not JSON, nested
    deeper than the parser goes, or not an object). Never raises."""
    try:
        body = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


class ControlError(Exception):
    """The server refused a request: ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class ControlUnavailable(ControlError):
    """No connection to the control server right now (or it did not answer in time)."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: 0.2 s doubling to ``maximum_s``, each spread by +/- ``jitter``.

    A control server that restarts is back within a second or two: with a 2 s cap every
    session is connected again within 3 s of it being up (2 s + 50 %), while a server that
    stays down costs each agent one TCP connect every 1-3 s. The wide jitter spreads a
    thousand agents' reconnects over two seconds instead of landing them in one.
    """

    initial_s: float = 0.2
    maximum_s: float = 2.0
    factor: float = 2.0
    jitter: float = 0.5

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay * random.uniform(1 - self.jitter, 1 + self.jitter)
            delay = min(self.maximum_s, delay * self.factor)


_BASE64 = re.compile(r"[A-Za-z0-9+/=]{1,12}")


class AsyncControlClient:
    def __init__(self, url: str, identity: Identity, *, name: str = "node",
                 on_push: Callback | None = None, on_welcome: Callback | None = None,
                 backoff: Backoff | None = None, open_timeout_s: float = 5.0,
                 request_timeout_s: float = 5.0, on_reachability: Reachability | None = None) -> None:
        self.url = url
        # Told once a change (connected, or lost / not reachable at all), never once a retry.
        self.on_reachability = on_reachability
        self._reported: bool | None = None
        try:
            self.target = ControlTarget.parse(url)
            self._target_error: str | None = None
        except TargetError as error:  # reported by run(), like an unreachable server
            self.target = ControlTarget(url, "", False)
            self._target_error = str(error)
        self.identity = identity
        self.name = name
        self.server_key: str | None = None  # what the server proved it holds, once connected
        self.fingerprint: str | None = None  # the TLS certificate it presented (wss:// only)
        self.on_push = on_push
        self.on_welcome = on_welcome
        self.backoff = backoff or Backoff()
        self.open_timeout_s = open_timeout_s
        self.request_timeout_s = request_timeout_s
        self.welcome: Message | None = None
        self.last_error: str | None = None
        self.connects = 0
        self._ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._connected = asyncio.Event()
        self._stopping = False
        self._announce: Message | None = None
        self._last_heard = 0.0  # loop time of the last frame from the server
        self._silent: float | None = None  # the silence that made the client drop the connection

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def pinned_url(self) -> str:
        """The URL with the server key and certificate this client verified: what invites carry."""
        return self.target.pinned(self.server_key or self.target.server_key,
                                  self.fingerprint or self.target.fingerprint)

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Stay connected until ``stop``: connect, authenticate, serve, back off, again."""
        if self._target_error is not None:
            self.last_error = self._target_error
            logger.error("control URL is not usable: {}", self._target_error)
            return
        delays = self.backoff.delays()
        while not self._stopping:
            try:
                async with connect(self.target.url, open_timeout=self.open_timeout_s,
                                   max_size=p.MAX_FRAME_BYTES, compression=None, ping_interval=None,
                                   proxy=None, user_agent_header="lanrage",
                                   ssl=self.target.client_tls()) as ws:
                    heartbeat_s = await self._authenticate(ws)
                    delays = self.backoff.delays()
                    await self._serve(ws, heartbeat_s)
                    reason = f": {ws.close_reason}" if ws.close_reason else ""
                    self.last_error = f"the control server closed the connection{reason}"
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, ControlError) as error:
                self.last_error = self._why(error)
                if self._silent is not None:
                    self.last_error = f"the control server answered nothing for {self._silent:.0f} s"
                    self._silent = None
            except InvalidURI as error:
                self.last_error = str(error)
                logger.error("control URL {} is not usable: {}", self.url, error)
                return
            finally:
                self._disconnected()
            if not self._stopping:
                self._report(False)
                delay = next(delays)
                logger.debug("control server {} unreachable ({}); retrying in {:.2f}s", self.url,
                             self.last_error, delay)
                await asyncio.sleep(delay)

    def _why(self, error: BaseException) -> str:
        """A failed connection in words that name the server's address and the likely cause."""
        where = self.target.authority
        if isinstance(error, ConnectionRefusedError):
            return (f"connection refused: nothing listens on {where} (a wrong port, or the server is not "
                    "running)")
        if isinstance(error, TimeoutError):
            return f"{where} did not answer within {self.open_timeout_s:g} s"
        if type(error) is OSError and error.strerror:  # unreachable network or host, reset, …
            return f"{where}: {error.strerror}"
        return str(error) or type(error).__name__

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()

    async def request(self, kind: str, timeout_s: float | None = None, **fields: Any) -> Message:
        """Send one request and return its answer; raise ControlError if it is an error."""
        ws = self._ws
        if ws is None or not self._connected.is_set():
            raise ControlUnavailable(f"not connected to the control server {self.url}"
                                     + (f": {self.last_error}" if self.last_error else ""))
        request_id = f"r{next(self._ids)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await ws.send(json.dumps({"type": kind, "v": p.VERSION, "id": request_id, **fields}))
            answer = await asyncio.wait_for(future, timeout_s or self.request_timeout_s)
        except TimeoutError:
            raise ControlUnavailable(f"the control server did not answer {kind} in time") from None
        except ConnectionClosed:
            raise ControlUnavailable("the connection to the control server closed") from None
        finally:
            self._pending.pop(request_id, None)
        if kind == "announce":
            self._announce = {k: v for k, v in fields.items()}
        return answer

    # ------------------------------------------------------------ internals

    async def _authenticate(self, ws: ClientConnection) -> float:
        seen = peer_fingerprint(ws.transport)
        if self.target.fingerprint and seen != self.target.fingerprint:
            raise ControlError("wrong_server", f"{self.target.authority} presented the TLS certificate "
                                               f"{seen[:12] or 'none'}…, not the one the URL's fp= pins "
                                               f"({self.target.fingerprint[:12]}…): check the fingerprint "
                                               "for a typo, or whether the server has a new certificate")
        await ws.send(json.dumps({"type": "hello", "v": p.VERSION, "public_key": self.identity.public_key,
                                  "name": self.name}))
        challenge = await self._expect(ws, "challenge")
        server_key = challenge.get("server_key")
        pinned = self.target.server_key
        if not isinstance(server_key, str) or (pinned and server_key != pinned):
            shown = server_key[:12] if isinstance(server_key, str) and _BASE64.fullmatch(server_key[:12]) \
                else "?"  # from the network: only base64 is printed
            why = (f"{self.target.authority} proved the server key {shown}…, not the one the URL's key= "
                   f"pins ({str(pinned)[:12]}…): check the key for a typo (an invite copied whole carries "
                   "it), or whether the server has a new key")
            raise ControlError("wrong_server", why)
        binding = ServerBinding(server_key, seen, self.target.authority)
        try:
            proof = self.identity.prove(str(challenge.get("ephemeral")), str(challenge.get("nonce")), binding)
        except IdentityError as error:
            raise ControlError(p.BAD_MESSAGE, f"unusable challenge: {error}") from None
        await ws.send(json.dumps({"type": "auth", "v": p.VERSION, "proof": proof, "server_key": server_key,
                                  "authority": binding.authority, "fingerprint": seen}))
        welcome = await self._expect(ws, "welcome")
        if not self.identity.check_server_proof(server_key, proof, str(welcome.get("server_proof", ""))):
            raise ControlError("wrong_server", f"{self.target.authority} did not prove it holds its key")
        self.server_key, self.fingerprint = server_key, seen or None
        self.welcome = welcome
        self._ws = ws
        self.connects += 1
        self.last_error = None
        if self._announce is not None:
            await ws.send(json.dumps({"type": "announce", "v": p.VERSION, **self._announce}))
        self._connected.set()
        self._report(True)
        logger.info("connected to control server {} as {}", self.url, welcome.get("peer_id"))
        if self.on_welcome is not None:
            self._call(self.on_welcome, welcome)
        return float(welcome.get("heartbeat_s", 10.0))

    async def _expect(self, ws: ClientConnection, kind: str) -> Message:
        frame = await asyncio.wait_for(ws.recv(), self.open_timeout_s)
        try:
            answer = json.loads(frame)
        except (ValueError, RecursionError):
            raise ControlError(p.BAD_JSON, f"the server answered {kind} with no JSON") from None
        if not isinstance(answer, dict):
            raise ControlError(p.BAD_MESSAGE, f"expected {kind}, got a JSON {type(answer).__name__}")
        if answer.get("type") == "error":
            raise ControlError(answer.get("code", "error"), answer.get("message", ""))
        if answer.get("type") != kind:
            raise ControlError(p.BAD_MESSAGE, f"expected {kind}, got {answer.get('type')!r}")
        return answer

    async def _serve(self, ws: ClientConnection, heartbeat_s: float) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        beat = asyncio.create_task(self._heartbeat(ws, heartbeat_s))
        try:
            async for frame in ws:
                self._last_heard = asyncio.get_running_loop().time()
                body = decode_frame(frame)
                if body is None:
                    continue
                future = self._pending.get(body.get("re")) if isinstance(body.get("re"), str) else None
                if future is not None:
                    if not future.done():
                        future.set_result(body) if body.get("type") != "error" else future.set_exception(
                            ControlError(body.get("code", "error"), body.get("message", "")))
                elif body.get("type") == "error":
                    logger.warning("control server: {}", body.get("message"))
                elif self.on_push is not None and body.get("type") not in _QUIET_REPLIES:
                    self._call(self.on_push, body)
        finally:
            beat.cancel()

    async def _heartbeat(self, ws: ClientConnection, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(interval_s)
                silent = loop.time() - self._last_heard
                if silent > SILENT_AFTER_HEARTBEATS * interval_s:
                    logger.warning("control server {} answered nothing for {:.1f}s; reconnecting", self.url,
                                   silent)
                    self._silent = silent
                    ws.transport.abort()  # a close handshake would wait on the same silence
                    return
                await ws.send(json.dumps({"type": "heartbeat", "v": p.VERSION}))

    def _disconnected(self) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._ws = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ControlUnavailable("the connection to the control server closed"))
        if was_connected and not self._stopping:  # a clean stop closes it on purpose
            logger.warning("lost the control server {}; reconnecting", self.url)

    def _report(self, reachable: bool) -> None:
        if self._reported is reachable or self.on_reachability is None:
            self._reported = reachable
            return
        self._reported = reachable
        try:
            self.on_reachability(reachable, None if reachable else self.last_error)
        except Exception:
            logger.exception("control client reachability callback failed")

    @staticmethod
    def _call(callback: Callback, body: Message) -> None:
        try:
            callback(body)
        except Exception:
            logger.exception("control client callback failed on {}", body.get("type"))


class ControlClient:
    """A blocking facade: the async client runs in its own thread and event loop.

    Pushes go to ``on_push`` (called in the client's thread) or, without one, to the
    ``pushes`` queue. Every call is safe from any thread.
    """

    def __init__(self, url: str, identity: Identity, *, name: str = "node",
                 on_push: Callback | None = None, on_welcome: Callback | None = None,
                 backoff: Backoff | None = None, request_timeout_s: float = 5.0) -> None:
        self.pushes: queue.Queue[Message] = queue.Queue()
        self.welcomes: queue.Queue[Message] = queue.Queue()
        self._client = AsyncControlClient(
            url, identity, name=name, on_push=on_push or self.pushes.put,
            on_welcome=on_welcome or self.welcomes.put, backoff=backoff,
            request_timeout_s=request_timeout_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lanrage-control-client", daemon=True)
        self._runner: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def welcome(self) -> Message | None:
        return self._client.welcome

    @property
    def peer_id(self) -> str:
        return self._client.peer_id

    @property
    def last_error(self) -> str | None:
        return self._client.last_error

    def start(self) -> ControlClient:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._client.run(), self._loop)
        return self

    def wait_connected(self, timeout_s: float = 5.0) -> bool:
        return asyncio.run_coroutine_threadsafe(
            self._client.wait_connected(timeout_s), self._loop).result(timeout_s + 1)

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._client.stop(), self._loop).result(timeout_s)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                self._runner.result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def request(self, kind: str, timeout_s: float | None = None, **fields: Any) -> Message:
        wait = (timeout_s or self._client.request_timeout_s) + 1
        return asyncio.run_coroutine_threadsafe(
            self._client.request(kind, timeout_s, **fields), self._loop).result(wait)

    def create_party(self, name: str) -> Message:
        return self.request("create_party", name=name)

    def join_party(self, party_id: str, secret: str) -> Message:
        return self.request("join_party", party_id=party_id, secret=secret)

    def leave_party(self, party_id: str) -> Message:
        return self.request("leave_party", party_id=party_id)

    def announce(self, nat_type: str, candidates: list[str]) -> Message:
        return self.request("announce", nat_type=nat_type, candidates=candidates)

    def signal(self, party_id: str, to: str, payload: dict[str, Any]) -> Message:
        return self.request("signal", party_id=party_id, to=to, payload=payload)

    def request_relay(self, party_id: str, to: str, relay: str | None = None,
                      failed_session: str | None = None) -> Message:
        return self.request("relay_request", party_id=party_id, to=to, relay=relay,
                            failed_session=failed_session)

    def list_relays(self) -> list[str]:
        return list(self.request("list_relays")["relays"])

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()
