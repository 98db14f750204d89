"""The blocking control client: requests, pushes, reconnect with backoff, re-announce."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mesh.control import (
    Backoff,
    ControlClient,
    ControlError,
    ControlServer,
    ControlUnavailable,
    Identity,
    ServerConfig,
)
from mesh.control.client import AsyncControlClient
from store.base import InMemoryRecorder

FAST = Backoff(initial_s=0.05, maximum_s=0.3)


class ServerThread:
    """A control server on its own event loop, stoppable and restartable on the same port."""

    def __init__(self, log: Any, **config: Any) -> None:
        self.log = log
        self.config = ServerConfig(**config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ControlServer | None = None
        self.port = 0

    def start(self) -> ControlServer:
        self.server = ControlServer(self.log, self.config)
        self.port = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", self.port),
                                                     self.loop).result(5)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@contextmanager
def server_thread(**config: Any) -> Iterator[ServerThread]:
    thread = ServerThread(InMemoryRecorder(), **config)
    thread.start()
    try:
        yield thread
    finally:
        thread.close()


@contextmanager
def client(url: str, name: str, identity: Identity | None = None) -> Iterator[ControlClient]:
    control = ControlClient(url, identity or Identity.generate(), name=name, backoff=FAST).start()
    try:
        yield control
    finally:
        control.stop()


def next_push(control: ControlClient, kind: str, timeout_s: float = 3.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = control.pushes.get(timeout=max(0.01, deadline - time.monotonic()))
        if body["type"] == kind:
            return body


def test_blocking_client_creates_joins_signals_and_leaves() -> None:
    with server_thread() as server, client(server.url, "alice") as alice, client(server.url, "bob") as bob:
        assert alice.wait_connected(5) and bob.wait_connected(5)
        created = alice.create_party("Friday LAN")
        party_id = created["party"]["party_id"]
        joined = bob.join_party(party_id, created["secret"])
        assert {m["name"] for m in joined["party"]["members"]} == {"alice", "bob"}
        assert next_push(alice, "peer_joined")["member"]["peer_id"] == bob.peer_id
        bob.signal(party_id, alice.peer_id, {"kind": "candidates", "candidates": ["203.0.113.4:51820"]})
        assert next_push(alice, "signal")["payload"]["candidates"] == ["203.0.113.4:51820"]
        with pytest.raises(ControlError) as refusal:
            bob.join_party(party_id, "wrong")
        assert refusal.value.code == "forbidden"
        bob.leave_party(party_id)
        assert next_push(alice, "peer_left")["peer_id"] == bob.peer_id
        assert alice.list_relays() == []


def test_client_reconnects_with_backoff_and_gets_its_parties_back() -> None:
    with server_thread(heartbeat_s=0.2) as server, client(server.url, "alice") as alice:
        assert alice.wait_connected(5)
        created = alice.create_party("lan")
        alice.announce("port_restricted", ["198.51.100.7:51820"])
        first = alice.welcomes.get(timeout=1)
        assert first["parties"] == []
        server.stop()
        deadline = time.monotonic() + 3
        while alice.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alice.connected
        with pytest.raises(ControlUnavailable):
            alice.list_relays()
        time.sleep(0.5)  # a few failed attempts while the server is down
        restarted = server.start()
        assert alice.wait_connected(5)
        again = alice.welcomes.get(timeout=2)
        assert [p["party_id"] for p in again["parties"]] == [created["party"]["party_id"]]
        # The last announce is re-sent on its own after the reconnect.
        deadline = time.monotonic() + 3
        while alice.peer_id not in restarted._online or restarted._online[alice.peer_id].nat_type != \
                "port_restricted":
            assert time.monotonic() < deadline, "announce was not re-sent"
            time.sleep(0.02)
        assert restarted._online[alice.peer_id].candidates == ("198.51.100.7:51820",)


def test_heartbeats_keep_a_quiet_client_online() -> None:
    with server_thread(heartbeat_s=0.1, ttl_s=0.5, sweep_s=0.05) as server, \
            client(server.url, "quiet") as quiet:
        assert quiet.wait_connected(5)
        time.sleep(1.5)
        assert quiet.connected and quiet.list_relays() == []
        assert server.server is not None and quiet.peer_id in server.server._online


def test_unreachable_server_and_bad_url_are_reported_not_raised() -> None:
    with client("ws://127.0.0.1:9", "lonely") as lonely:
        assert not lonely.wait_connected(0.5)
        assert lonely.last_error
        with pytest.raises(ControlUnavailable, match="not connected"):
            lonely.create_party("x")

    async def bad_url() -> str | None:
        control = AsyncControlClient("not-a-url", Identity.generate(), backoff=FAST)
        await asyncio.wait_for(control.run(), 2)
        return control.last_error

    assert asyncio.run(bad_url())


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    delays = Backoff(initial_s=0.1, maximum_s=1.0, factor=2.0, jitter=0.2).delays()
    values = [next(delays) for _ in range(8)]
    assert 0.08 <= values[0] <= 0.12 and all(0.8 <= v <= 1.2 for v in values[5:])
    assert values[3] > values[0]


def test_push_queue_is_used_when_no_callback_is_given() -> None:
    control = ControlClient("ws://127.0.0.1:9", Identity.generate())
    assert isinstance(control.pushes, queue.Queue)


def test_reachability_is_reported_once_a_transition_and_a_silent_server_is_left() -> None:
    """Lost and back are told once each, however many retries the backoff makes; a server that
    answers nothing (a black hole never closes TCP) counts as lost after three heartbeats."""
    seen: list[tuple[bool, str | None]] = []

    async def wait_for(check: Any, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.02)

    with server_thread(heartbeat_s=0.2) as server:
        async def scenario() -> None:
            control = AsyncControlClient(server.url, Identity.generate(), backoff=FAST,
                                         on_reachability=lambda up, error: seen.append((up, error)))
            task = asyncio.create_task(control.run())
            try:
                await wait_for(lambda: control.connected)
                await asyncio.to_thread(server.stop)  # the server waits for this loop's close
                await asyncio.sleep(1.0)  # several retries at FAST's backoff
                await asyncio.to_thread(server.start)
                await wait_for(lambda: len(seen) == 3)
                # Silence: the server's loop is busy for 1.5 s, well over three 0.2 s heartbeats.
                server.loop.call_soon_threadsafe(time.sleep, 1.5)
                await wait_for(lambda: len(seen) == 5)
            finally:
                await control.stop()
                task.cancel()

        asyncio.run(scenario())
    assert [up for up, _ in seen] == [True, False, True, False, True]
    assert seen[1][1] and seen[3][1] is not None and seen[3][1].startswith(
        "the control server answered nothing for "), seen


def test_the_default_backoff_brings_a_session_back_within_3_s_of_a_restarted_server() -> None:
    """However long the server was down, the next try is at most 3 s away (2 s + 50 %)."""
    delays = Backoff().delays()
    values = [next(delays) for _ in range(200)]
    assert max(values) <= 3.0 and min(values[5:]) >= 1.0
    assert len({round(v, 3) for v in values[10:]}) > 100  # jittered: agents do not retry in step


def test_a_mistyped_server_key_is_named_as_a_possible_typo_not_only_refused() -> None:
    from urllib.parse import quote

    real, wrong = Identity.generate(), Identity.generate().public_key
    with server_thread(identity=real) as server, \
            client(f"{server.url}/?key={quote(wrong, safe='')}", "alice") as alice:
        assert not alice.wait_connected(1.0)
        assert alice.last_error == (
            f"127.0.0.1:{server.port} proved the server key {real.public_key[:12]}…, not the one the URL's "
            f"key= pins ({wrong[:12]}…): check the key for a typo (an invite copied whole carries it), or "
            "whether the server has a new key (wrong_server)")


def test_a_clean_stop_does_not_warn_of_a_lost_server() -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message).strip()), format="{level} {message}")
    try:
        with server_thread() as server:
            with client(server.url, "alice") as alice:
                assert alice.wait_connected(5)
            server.stop()  # the client is gone before: nothing of its own to lose
    finally:
        logger.remove(sink)
    assert [line for line in lines if "lost the control server" in line] == []
    assert [line.split(" as ")[0] for line in lines if "connected to control server" in line] == [
        f"INFO connected to control server {server.url}"]
