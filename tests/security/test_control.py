"""Attacks on the control server, over real WebSockets on 127.0.0.1.

A rogue server relaying the real server's challenge, a node that stops reading, a
party spammer, a prober of party ids, a node pairing with itself, and a member that
left but kept its relay ticket: each now gets nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mesh.control import protocol as p
from mesh.control.client import AsyncControlClient, Backoff
from mesh.control.identity import Identity
from mesh.control.server import JOIN_REFUSED
from mesh.control.target import ControlTarget, self_signed, server_tls
from mesh.relay import RelayConfig, RelayServer, wire
from tests.control.helpers import logged_in, open_peer, running
from tests.relay.helpers import SECRET, Peer, wait_for

FAST = Backoff(initial_s=0.05, maximum_s=0.2)


def run(coroutine: Any) -> None:
    asyncio.run(coroutine)


async def party_of(port: int, members: int) -> tuple[list[Any], dict[str, Any], str]:
    host = await logged_in(port, "host")
    created = await host.call(type="create_party", name="LAN")
    peers = [host]
    for index in range(1, members):
        peer = await logged_in(port, f"peer{index}")
        joined = await peer.call(type="join_party", party_id=created["party"]["party_id"],
                                 secret=created["secret"])
        assert joined["type"] == "party_joined", joined
        peers.append(peer)
    return peers, created["party"], created["secret"]


class RogueRelay:
    """A rogue control server that relays every frame to the real one, and keeps what it learns."""

    def __init__(self, real_url: str, ssl_context: Any = None) -> None:
        self.real_url = real_url
        self.ssl_context = ssl_context
        self.from_real: list[dict[str, Any]] = []
        self.after_login: dict[str, Any] | None = None

    async def handle(self, victim: ServerConnection) -> None:
        import ssl

        client_tls = None
        if self.real_url.startswith("wss://"):
            client_tls = ssl.create_default_context()
            client_tls.check_hostname = False
            client_tls.verify_mode = ssl.CERT_NONE
        async with connect(self.real_url, proxy=None, ssl=client_tls) as real:
            for _ in range(2):  # hello -> challenge, auth -> welcome or error
                await real.send(await victim.recv())
                answer = await real.recv()
                self.from_real.append(json.loads(answer))
                await victim.send(answer)
            # Whatever the victim does next, the rogue now tries to act as the victim.
            await real.send(json.dumps({"type": "list_relays", "v": 1, "id": "rogue"}))
            try:
                self.after_login = json.loads(await asyncio.wait_for(real.recv(), 2))
            except (ConnectionClosed, TimeoutError):
                self.after_login = {"type": "closed"}


def auth_answers(rogue: RogueRelay) -> list[dict[str, Any]]:
    """What the real server answered to the victim's proofs, relayed by the rogue."""
    return [answer for answer in rogue.from_real if answer.get("type") != "challenge"]


async def victim_login(url: str, done: Callable[[AsyncControlClient], bool],
                       timeout_s: float = 10.0) -> AsyncControlClient:
    """The victim's client tries to log in until it is connected or ``done`` holds (what the
    test waits for happened), for ``timeout_s`` at most, then stops."""
    client = AsyncControlClient(url, Identity.generate(), backoff=FAST, open_timeout_s=2)
    task = asyncio.create_task(client.run())
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (client.connected or done(client)) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    await client.stop()
    task.cancel()
    return client


def test_a_rogue_server_relaying_the_challenge_cannot_log_in_as_the_victim() -> None:
    async def scenario() -> None:
        async with running() as real:
            rogue = RogueRelay(f"ws://127.0.0.1:{real.port}")
            async with serve(rogue.handle, "127.0.0.2", 0) as rogue_server:
                rogue_port = next(iter(rogue_server.sockets)).getsockname()[1]
                # The rogue's invite even pins the real server's key: the challenge it relays matches.
                url = ControlTarget.parse(f"ws://127.0.0.2:{rogue_port}/").pinned(real.server_key, None)
                victim = await victim_login(url, lambda _: rogue.after_login is not None)
                assert not victim.connected
                answers = auth_answers(rogue)  # every attempt's (the victim retries meanwhile)
                assert answers and all(
                    answer["type"] == "error" and answer["code"] == p.AUTH_FAILED
                    and "not this server" in answer["message"] for answer in answers), answers
                assert rogue.after_login is not None and rogue.after_login.get("type") in ("closed", "error")
                assert rogue.after_login.get("type") != "relays"
                assert victim.identity.peer_id not in real._online
    run(scenario())


def test_a_rogue_tls_server_on_the_real_name_cannot_use_the_victims_proof(tmp_path: Path) -> None:
    """Even when the rogue answers on the very name the real server uses (a spoofed DNS record)."""
    real_cert, real_key = tmp_path / "real.pem", tmp_path / "real.key"
    rogue_cert, rogue_key = tmp_path / "rogue.pem", tmp_path / "rogue.key"
    self_signed(real_cert, real_key, ["127.0.0.1"])
    self_signed(rogue_cert, rogue_key, ["127.0.0.2"])
    real_tls, real_fp = server_tls(real_cert, real_key)
    rogue_tls, rogue_fp = server_tls(rogue_cert, rogue_key)
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        rogue_port = probe.getsockname()[1]
    shared_name = f"wss://127.0.0.2:{rogue_port}/"

    async def scenario() -> None:
        async with running(tls=real_tls, fingerprint=real_fp, public_urls=(shared_name,)) as real:
            rogue = RogueRelay(f"wss://127.0.0.1:{real.port}")
            async with serve(rogue.handle, "127.0.0.2", rogue_port, ssl=rogue_tls):
                # An invite naming the real key and certificate: the rogue's certificate fails the pin.
                honest = ControlTarget.parse(shared_name).pinned(real.server_key, real_fp)
                victim = await victim_login(honest, lambda client: "certificate" in (client.last_error or ""))
                assert not victim.connected and "certificate" in (victim.last_error or "")
                assert rogue.from_real == []  # nothing was sent through the rogue
                # The rogue's own invite pins its certificate: the proof names it, the real server refuses.
                forged = ControlTarget.parse(shared_name).pinned(real.server_key, rogue_fp)
                victim = await victim_login(forged, lambda _: rogue.after_login is not None)
                assert not victim.connected
                answers = auth_answers(rogue)
                assert answers and all(
                    answer.get("code") == p.AUTH_FAILED and "certificate" in answer["message"]
                    for answer in answers), answers
                assert rogue.after_login is not None and rogue.after_login.get("type") != "relays"
            # The honest path works end to end over wss:// with the pinned certificate.
            good = AsyncControlClient(real.url("127.0.0.1"), Identity.generate(), backoff=FAST)
            task = asyncio.create_task(good.run())
            assert await good.wait_connected(3)
            assert good.fingerprint == real_fp and good.server_key == real.server_key
            await good.stop()
            task.cancel()
    run(scenario())


def test_a_node_that_stops_reading_is_dropped_and_freed() -> None:
    async def scenario() -> None:
        # Signals fill the stuck node's outbox here as fast as the server's own pushes could: the
        # sender's signal budget and the relayed share of an outbox (test_signal_bounds.py) are off.
        async with running(write_timeout_s=1.0, outbox_max_bytes=512 * 1024, rate_per_s=1000.0,
                           rate_burst=1000.0, signal_bytes_per_s=1e12, signal_burst_bytes=1e12,
                           max_relayed_queue_bytes=1 << 40) as server:
            (sender,), party, secret = await party_of(server.port, 1)
            stuck = await open_peer(server.port)
            await stuck.login("stuck")
            await stuck.call(type="join_party", party_id=party["party_id"], secret=secret)
            sock = stuck.ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.ws.transport.pause_reading()  # from here on, the node never reads again
            payload = {"blob": "x" * 60_000}
            for _ in range(300):  # ~18 MB towards the stuck node, bounded in count
                await sender.send({"type": "signal", "party_id": party["party_id"], "to": stuck.peer_id,
                                   "payload": payload})
                if server.session_count() == 1:
                    break
                await asyncio.sleep(0.005)
            for _ in range(100):
                if server.session_count() == 1:
                    break
                await asyncio.sleep(0.1)
            assert server.session_count() == 1  # the stuck session is gone, its outbox with it
            assert stuck.peer_id not in server._online
            assert (await sender.call(type="heartbeat", timeout_s=5))["type"] == "heartbeat_ack"
    run(scenario())


def test_quotas_on_parties_and_connections() -> None:
    async def scenario() -> None:
        async with running(max_parties_per_key=3, max_parties_per_address_per_hour=5,
                           max_connections_per_address=8) as server:
            spammer = await logged_in(server.port)
            answers = [await spammer.call(type="create_party", name=f"spam{n}") for n in range(4)]
            assert [a["type"] for a in answers] == ["party_created"] * 3 + ["error"]
            assert answers[3]["code"] == p.QUOTA
            other = await logged_in(server.port)  # a new key from the same address
            answers = [await other.call(type="create_party", name=f"spam{n}") for n in range(3)]
            assert [a["type"] for a in answers] == ["party_created"] * 2 + ["error"]
            assert len(server.registry) == 5
            peers = [await open_peer(server.port) for _ in range(6)]  # 8 connections in all
            with pytest.raises(InvalidStatus) as refused:
                await open_peer(server.port)
            assert refused.value.response.status_code == 429
            await peers[0].ws.close()
            await asyncio.sleep(0.2)
            assert (await open_peer(server.port)).ws is not None  # a freed slot is usable again
    run(scenario())


def test_one_answer_for_no_such_party_and_not_yours() -> None:
    async def scenario() -> None:
        async with running() as server:
            (_host,), party, _secret = await party_of(server.port, 1)
            prober = await logged_in(server.port)
            real, ghost = party["party_id"], "0123456789abcdef"
            join_real = await prober.call(type="join_party", party_id=real, secret="guess")
            join_ghost = await prober.call(type="join_party", party_id=ghost, secret="guess")
            assert (join_real["code"], join_real["message"]) == (join_ghost["code"], join_ghost["message"])
            assert join_real["message"] == JOIN_REFUSED
            for kind, extra in (("leave_party", {}), ("signal", {"to": "x", "payload": {}}),
                                ("relay_request", {"to": "x"})):
                on_real = await prober.call(type=kind, party_id=real, **extra)
                on_ghost = await prober.call(type=kind, party_id=ghost, **extra)
                assert on_real["code"] == on_ghost["code"] == p.NOT_MEMBER
                assert on_real["message"].replace(real, "ID") == on_ghost["message"].replace(ghost, "ID")
    run(scenario())


def test_a_node_cannot_get_a_relay_session_with_itself() -> None:
    async def scenario() -> None:
        async with running(relays=("127.0.0.1:3478",), relay_key=SECRET) as server:
            (host, _guest), party, _ = await party_of(server.port, 2)
            answer = await host.call(type="relay_request", party_id=party["party_id"], to=host.peer_id)
            assert (answer["type"], answer["code"]) == ("error", p.BAD_MESSAGE)
    run(scenario())


def test_leaving_a_party_revokes_the_relay_sessions_of_that_member() -> None:
    relay = RelayServer(SECRET, ("127.0.0.1", 0), config=RelayConfig(sample_interval_s=0.3))
    relay.start()
    relay_name = f"127.0.0.1:{relay.address[1]}"
    a_sock, b_sock = Peer(relay), Peer(relay)

    async def scenario() -> None:
        async with running(relays=(relay_name,), relay_key=SECRET) as server:
            (host, guest), party, _ = await party_of(server.port, 2)
            mine = await host.call(type="relay_request", party_id=party["party_id"], to=guest.peer_id)
            theirs = await guest.push("relay_offer")
            from mesh.relay.tickets import RelayTicket

            ticket_a = RelayTicket(**mine["ticket"])
            ticket_b = RelayTicket(**theirs["ticket"])
            assert wire.parse_hello_ok(await asyncio.to_thread(a_sock.hello, ticket_a)) is not None
            assert wire.parse_hello_ok(await asyncio.to_thread(b_sock.hello, ticket_b)) is not None
            assert relay.active_sessions() == 1
            await guest.call(type="leave_party", party_id=party["party_id"])
            assert await asyncio.to_thread(wait_for, lambda: relay.active_sessions() == 0, 3.0)
            refused = wire.parse_refused(await asyncio.to_thread(b_sock.hello, ticket_b))
            assert refused is not None and refused[1] == wire.REVOKED

    try:
        run(scenario())
    finally:
        a_sock.close()
        b_sock.close()
        relay.stop()
