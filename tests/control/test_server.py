"""The control server over real WebSockets on 127.0.0.1: admission, pushes, signalling, TTLs."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from events import types as ev
from events.streams import control_stream
from mesh.control import protocol as p
from mesh.control.identity import Identity, peer_id_for
from mesh.control.server import JOIN_REFUSED
from mesh.keys import PrivateKey
from mesh.relay.tickets import side_key
from store.base import InMemoryRecorder
from tests.control.helpers import logged_in, open_peer, running


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


async def _party(port: int, members: int = 2) -> tuple[list, dict, str]:
    host = await logged_in(port, "host")
    created = await host.call(type="create_party", name="Friday LAN")
    assert created["type"] == "party_created"
    peers = [host]
    for index in range(1, members):
        peer = await logged_in(port, f"peer{index}")
        joined = await peer.call(type="join_party", party_id=created["party"]["party_id"],
                                 secret=created["secret"])
        assert joined["type"] == "party_joined", joined
        peers.append(peer)
    return peers, created["party"], created["secret"]


def test_create_join_push_and_distinct_virtual_ips() -> None:
    async def scenario() -> None:
        log = InMemoryRecorder()
        async with running(log) as server:
            (host, guest, third), party, _ = await _party(server.port, 3)
            joined = await host.push("peer_joined")
            assert joined["party_id"] == party["party_id"]
            assert joined["member"]["peer_id"] == guest.peer_id
            assert joined["member"]["public_key"] == guest.identity.public_key
            assert joined["member"]["online"] is True
            assert (await guest.push("peer_joined"))["member"]["peer_id"] == third.peer_id
            members = server.registry.party(party["party_id"]).members
            assert {m.peer_id: m.virtual_ip for m in members} == {
                host.peer_id: "10.66.0.1", guest.peer_id: "10.66.0.2", third.peer_id: "10.66.0.3"}
    run(scenario())


def test_joining_twice_is_idempotent() -> None:
    async def scenario() -> None:
        log = InMemoryRecorder()
        async with running(log) as server:
            (host, guest), party, secret = await _party(server.port, 2)
            await host.push("peer_joined")
            before = log.last_global_position()
            again = await guest.call(type="join_party", party_id=party["party_id"], secret=secret)
            assert again["type"] == "party_joined"
            mine = [m for m in again["party"]["members"] if m["peer_id"] == guest.peer_id]
            assert [m["virtual_ip"] for m in mine] == ["10.66.0.2"]
            assert log.last_global_position() == before
            with pytest.raises(TimeoutError):
                await host.push("peer_joined", 0.3)
    run(scenario())


def test_wrong_and_missing_secret_are_refused_and_recorded_without_the_secret() -> None:
    async def scenario() -> None:
        log = InMemoryRecorder()
        async with running(log, refusal_window_s=0) as server:  # each refusal recorded (none counted)
            (host,), party, secret = await _party(server.port, 1)
            intruder = await logged_in(server.port, "intruder")
            wrong = await intruder.call(type="join_party", party_id=party["party_id"],
                                        secret=secret[:-1] + "x")
            missing = await intruder.call(type="join_party", party_id=party["party_id"])
            unknown = await intruder.call(type="join_party", party_id="nosuchparty", secret=secret)
            # One answer for all three: a stranger cannot tell which party ids exist.
            for answer in (wrong, missing, unknown):
                assert (answer["code"], answer["message"]) == (p.FORBIDDEN, JOIN_REFUSED)
            members = server.registry.party(party["party_id"]).members
            assert [m.peer_id for m in members] == [host.peer_id]
            refusals = [r.event for r in log.read_all() if isinstance(r.event, ev.ControlJoinRefused)]
            assert [r.reason for r in refusals] == ["wrong party secret", "missing party secret",
                                                    "unknown party"]
            assert all(r.public_key == intruder.identity.public_key for r in refusals)
            # The connection keeps serving after refusals.
            assert (await intruder.call(type="heartbeat"))["type"] == "heartbeat_ack"
            # No event anywhere holds the secret; the registry holds only a salted hash.
            stored = json.dumps([r.event.to_payload() for r in log.read_all()])
            assert secret not in stored and "sha256$" in stored
    run(scenario())


def test_repeated_refusals_close_the_connection() -> None:
    async def scenario() -> None:
        async with running(max_refused_joins=3) as server:
            (_,), party, _ = await _party(server.port, 1)
            intruder = await logged_in(server.port)
            for _ in range(3):
                answer = await intruder.call(type="join_party", party_id=party["party_id"], secret="guess")
                assert answer["code"] == p.FORBIDDEN
            await asyncio.wait_for(intruder.ws.wait_closed(), 3)
            assert intruder.ws.close_code == p.CLOSE_TOO_MANY_ERRORS
    run(scenario())


def test_a_node_claiming_another_nodes_key_is_refused_and_the_server_keeps_serving() -> None:
    async def scenario() -> None:
        async with running() as server:
            (_host, guest), _party_info, _ = await _party(server.port, 2)
            impostor = await open_peer(server.port, Identity.generate())
            challenge = await impostor.call(type="hello", public_key=guest.identity.public_key)
            # It holds a different private key, so its proof cannot match the claimed key.
            answer = await impostor.auth(challenge)
            assert (answer["type"], answer["code"]) == ("error", p.AUTH_FAILED)
            await asyncio.wait_for(impostor.ws.wait_closed(), 3)
            assert impostor.ws.close_code == p.CLOSE_AUTH_FAILED
            # The real owner was not disturbed, and the server keeps serving.
            assert (await guest.call(type="heartbeat"))["type"] == "heartbeat_ack"
            assert server._online[guest.peer_id] is not None
            third = await logged_in(server.port)
            assert (await third.call(type="list_relays"))["type"] == "relays"
            # A replayed proof on a new connection fails too (new challenge each time).
            replay = await open_peer(server.port, guest.identity)
            await replay.call(type="hello", public_key=guest.identity.public_key)
            refused = await replay.auth(challenge)
            assert refused["code"] == p.AUTH_FAILED
    run(scenario())


def test_the_key_holder_reconnecting_supersedes_its_stale_connection() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), _info, _ = await _party(server.port, 2)
            again = await logged_in(server.port, "guest", guest.identity)
            await asyncio.wait_for(guest.ws.wait_closed(), 3)
            assert guest.ws.close_code == p.CLOSE_SUPERSEDED
            assert (await again.call(type="heartbeat"))["type"] == "heartbeat_ack"
            # Other members never saw it go offline for good: the last update says online.
            await asyncio.sleep(0.2)
            updates = [m for m in host.inbox if m["type"] == "peer_updated"]
            while True:
                try:
                    updates.append(await host.push("peer_updated", 0.3))
                except TimeoutError:
                    break
            assert updates and updates[-1]["member"]["online"] is True
    run(scenario())


@pytest.mark.parametrize(("frame", "code"), [
    ("not json", p.BAD_JSON),
    ("{\"v\": 1}", p.UNKNOWN_TYPE),
    ("{\"v\": 9, \"type\": \"heartbeat\"}", p.UNSUPPORTED_VERSION),
    ("{\"v\": 1, \"type\": \"signal\", \"party_id\": \"x\"}", p.BAD_MESSAGE),
    (b"\x00\x01binary", p.BAD_JSON),
    (json.dumps({"v": 1, "type": "heartbeat", "pad": "x" * 200_000}), p.TOO_LARGE),
    ("[" * 50_000, p.BAD_JSON),
])
def test_malformed_and_oversized_messages_get_an_error_and_the_connection_keeps_serving(
        frame: str | bytes, code: str) -> None:
    async def scenario() -> None:
        async with running() as server:
            peer = await logged_in(server.port)
            await peer.send(frame)
            answer = await peer.receive()
            assert (answer["type"], answer["code"]) == ("error", code)
            assert answer["message"]
            assert (await peer.call(type="heartbeat"))["type"] == "heartbeat_ack"
    run(scenario())


def test_a_frame_over_the_hard_limit_closes_only_that_connection() -> None:
    async def scenario() -> None:
        async with running() as server:
            other = await logged_in(server.port)
            peer = await logged_in(server.port)
            await peer.send("x" * (p.MAX_FRAME_BYTES + 10))
            with pytest.raises(ConnectionClosed):
                await peer.receive()
            assert peer.ws.close_code == 1009  # message too big
            assert (await other.call(type="heartbeat"))["type"] == "heartbeat_ack"
            assert (await (await logged_in(server.port)).call(type="heartbeat"))["type"] == "heartbeat_ack"
    run(scenario())


def test_requests_before_authentication_are_refused_but_not_fatal() -> None:
    async def scenario() -> None:
        async with running() as server:
            peer = await open_peer(server.port)
            answer = await peer.call(type="create_party", name="x")
            assert answer["code"] == p.NOT_AUTHENTICATED
            early = await peer.call(type="auth", proof="abc", server_key=server.server_key,
                                    authority=peer.authority)
            assert early["code"] == p.NOT_AUTHENTICATED
            assert (await peer.login())["type"] == "welcome"
            again = await peer.call(type="hello", public_key=peer.identity.public_key)
            assert again["code"] == p.BAD_MESSAGE
    run(scenario())


def test_unauthenticated_connections_time_out() -> None:
    async def scenario() -> None:
        async with running(auth_timeout_s=0.3, sweep_s=0.05) as server:
            peer = await open_peer(server.port)
            answer = await peer.receive()
            assert answer["code"] == p.NOT_AUTHENTICATED
            await asyncio.wait_for(peer.ws.wait_closed(), 3)
            assert peer.ws.close_code == p.CLOSE_AUTH_TIMEOUT
    run(scenario())


def test_rate_limit_answers_instead_of_serving() -> None:
    async def scenario() -> None:
        async with running(rate_per_s=1.0, rate_burst=5.0, max_errors=1000) as server:
            peer = await logged_in(server.port)
            for _ in range(10):
                await peer.send({"type": "heartbeat"})
            answers = [await peer.receive() for _ in range(10)]
            assert {a.get("code") for a in answers} >= {p.RATE_LIMITED}
            assert sum(a["type"] == "heartbeat_ack" for a in answers) <= 5
    run(scenario())


def test_signal_is_forwarded_only_between_members() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), party, _ = await _party(server.port, 2)
            outsider = await logged_in(server.port)
            payload = {"kind": "punch", "candidates": ["203.0.113.7:51820"], "at": 12.5}
            sent = await host.call(type="signal", party_id=party["party_id"], to=guest.peer_id,
                                   payload=payload)
            assert sent["type"] == "signal_sent"
            signal = await guest.push("signal")
            assert signal["from"] == host.peer_id and signal["payload"] == payload
            assert signal["party_id"] == party["party_id"]
            refused = await outsider.call(type="signal", party_id=party["party_id"], to=guest.peer_id,
                                          payload={})
            assert refused["code"] == p.NOT_MEMBER
            stranger = await host.call(type="signal", party_id=party["party_id"], to=outsider.peer_id,
                                       payload={})
            assert stranger["code"] == p.NOT_MEMBER
            await guest.ws.close()
            await asyncio.sleep(0.2)
            offline = await host.call(type="signal", party_id=party["party_id"], to=guest.peer_id,
                                      payload={})
            assert offline["code"] == p.PEER_OFFLINE
    run(scenario())


def test_announce_pushes_candidates_to_the_party() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), _info, _ = await _party(server.port, 2)
            await guest.call(type="announce", nat_type="symmetric", candidates=["203.0.113.9:40000"])
            update = await host.push("peer_updated")
            while update["member"]["nat_type"] != "symmetric":
                update = await host.push("peer_updated")
            assert update["member"]["candidates"] == ["203.0.113.9:40000"]
            # A node that (re)connects gets the candidates in its welcome snapshot.
            welcome = await (await open_peer(server.port, host.identity)).login()
            members = {m["peer_id"]: m for m in welcome["parties"][0]["members"]}
            assert members[guest.peer_id]["candidates"] == ["203.0.113.9:40000"]
            assert members[guest.peer_id]["nat_type"] == "symmetric"
    run(scenario())


def test_announced_static_devices_reach_the_party_and_keep_their_addresses() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), party, secret = await _party(server.port, 2)
            key = PrivateKey.generate().public_key
            device = {"party_id": party["party_id"], "device_id": peer_id_for(key), "name": "switch",
                      "public_key": key, "virtual_ip": "10.66.0.3"}
            answer = await guest.call(type="announce", nat_type="open", candidates=[], devices=[device])
            assert answer["type"] == "announced", answer
            update = await host.push("peer_updated")
            while not update["member"]["devices"]:
                update = await host.push("peer_updated")
            assert update["member"]["devices"] == [{k: v for k, v in device.items() if k != "party_id"}]
            # The allocator skips the device's address: the next member gets .4, not .3.
            third = await logged_in(server.port, "third")
            joined = await third.call(type="join_party", party_id=party["party_id"], secret=secret)
            mine = next(m for m in joined["party"]["members"] if m["peer_id"] == third.peer_id)
            assert mine["virtual_ip"] == "10.66.0.4"
            # Refused: a member's address, another party, a forged id. The old devices stay.
            refused = [
                ({**device, "virtual_ip": "10.66.0.1"}, f"belongs to {host.peer_id}"),
                ({**device, "party_id": "0123456789abcdef"}, "you are not a member"),
                ({**device, "device_id": "forged"}, "its id is not its public key's"),
                ({**device, "virtual_ip": "192.0.2.1"}, "is not in 10.66.0.0/16")]
            for bad, reason in refused:
                answer = await guest.call(type="announce", devices=[bad])
                assert answer["type"] == "error" and reason in answer["message"], answer
            welcome = await (await open_peer(server.port, host.identity)).login()
            members = {m["peer_id"]: m for m in welcome["parties"][0]["members"]}
            assert [d["name"] for d in members[guest.peer_id]["devices"]] == ["switch"]
            # Leaving takes the member's devices with it.
            await guest.call(type="leave_party", party_id=party["party_id"])
            assert server._reserved(party["party_id"]) == ()
    run(scenario())


def test_leave_pushes_peer_left_and_is_recorded() -> None:
    async def scenario() -> None:
        log = InMemoryRecorder()
        async with running(log) as server:
            (host, guest, third), party, _ = await _party(server.port, 3)
            answer = await guest.call(type="leave_party", party_id=party["party_id"])
            assert answer["type"] == "party_left"
            for member in (host, third):
                left = await member.push("peer_left")
                assert (left["peer_id"], left["reason"]) == (guest.peer_id, "left")
            assert (await guest.call(type="leave_party", party_id=party["party_id"]))["code"] == p.NOT_MEMBER
            removed = [r.event for r in log.read_all() if isinstance(r.event, ev.ControlMemberRemoved)]
            assert [(e.peer_id, e.reason) for e in removed] == [(guest.peer_id, "left")]
    run(scenario())


def test_heartbeat_ttl_marks_a_silent_node_offline_and_expiry_removes_it() -> None:
    async def scenario() -> None:
        async with running(ttl_s=0.4, sweep_s=0.05, member_expiry_s=0.8) as server:
            (host, guest), party, _ = await _party(server.port, 2)
            # host keeps beating; guest goes silent.
            async def beat() -> None:
                for _ in range(40):
                    await host.send({"type": "heartbeat"})
                    await asyncio.sleep(0.1)
            beating = asyncio.create_task(beat())
            await asyncio.wait_for(guest.ws.wait_closed(), 3)
            assert guest.ws.close_code == p.CLOSE_HEARTBEAT_TIMEOUT
            update = await host.push("peer_updated")
            assert (update["member"]["peer_id"], update["member"]["online"]) == (guest.peer_id, False)
            left = await host.push("peer_left")
            assert (left["peer_id"], left["reason"]) == (guest.peer_id, "expired")
            assert [m.peer_id for m in server.registry.party(party["party_id"]).members] == [host.peer_id]
            beating.cancel()
    run(scenario())


def test_restart_restores_the_registry_from_the_log() -> None:
    async def scenario() -> None:
        log = InMemoryRecorder()
        async with running(log, relays=("203.0.113.20:3479",)) as server:
            (host, guest), party, secret = await _party(server.port, 2)
        async with running(log, relays=("203.0.113.20:3479", "198.51.100.20:3479")) as server:
            welcome = await (await open_peer(server.port, guest.identity)).login()
            assert [p_["party_id"] for p_ in welcome["parties"]] == [party["party_id"]]
            members = {m["peer_id"]: m for m in welcome["parties"][0]["members"]}
            assert members[guest.peer_id]["virtual_ip"] == "10.66.0.2"
            assert members[host.peer_id]["online"] is False
            assert welcome["relays"] == ["203.0.113.20:3479", "198.51.100.20:3479"]
            newcomer = await logged_in(server.port)
            joined = await newcomer.call(type="join_party", party_id=party["party_id"], secret=secret)
            assert [m["virtual_ip"] for m in joined["party"]["members"]][-1] == "10.66.0.3"
        kinds = [r.event_type for r in log.read_stream(control_stream("default"))]
        assert kinds.count("ControlRelayRegistered") == 2
    run(scenario())


def test_relay_offer_gives_each_side_its_own_ticket() -> None:
    async def scenario() -> None:
        key = b"k" * 32
        async with running(relays=("203.0.113.20:3479", "203.0.113.22:3479"), relay_key=key) as server:
            (host, guest), party, _ = await _party(server.port, 2)
            mine = await host.call(type="relay_request", party_id=party["party_id"], to=guest.peer_id)
            theirs = await guest.push("relay_offer")
            assert mine["delivered"] is True and theirs["from"] == host.peer_id
            a, b = mine["ticket"], theirs["ticket"]
            assert a["session_id"] == b["session_id"] and {a["side"], b["side"]} == {0, 1}
            assert a["relay"] == "203.0.113.20:3479" and a["key_hex"] != b["key_hex"]
            for ticket in (a, b):
                assert ticket["key_hex"] == side_key(key, ticket["session_id"], ticket["party_id"],
                                                     ticket["peer_a"], ticket["peer_b"],
                                                     ticket["expiry_s"], ticket["side"]).hex()
            # Whoever asks, and however often, a pair shares one session: both ends must meet.
            again = await guest.call(type="relay_request", party_id=party["party_id"], to=host.peer_id)
            assert again["ticket"] == b
            assert (await host.push("relay_offer"))["ticket"] == a
            # Even when the other side's monitor prefers another relay: one meeting point.
            other = await guest.call(type="relay_request", party_id=party["party_id"], to=host.peer_id,
                                     relay="203.0.113.22:3479")
            assert other["ticket"] == b
            unknown = await host.call(type="relay_request", party_id=party["party_id"], to=guest.peer_id,
                                      relay="192.0.2.99:1")
            assert unknown["code"] == p.NOT_FOUND
        async with running() as server:
            (host, guest), party, _ = await _party(server.port, 2)
            none = await host.call(type="relay_request", party_id=party["party_id"], to=guest.peer_id)
            assert none["code"] == p.NO_RELAY
    run(scenario())


def test_a_session_a_side_reported_failed_is_never_handed_back() -> None:
    """Relay affinity gives both ends the pair's first session for 30 s, whatever relay they
    ask: but not one that a side saw fail. The other side, reporting it too, meets the new one."""
    async def scenario() -> None:
        relays = ("203.0.113.20:3479", "203.0.113.22:3479")
        async with running(relays=relays, relay_key=b"k" * 32) as server:
            (host, guest), party, _ = await _party(server.port, 2)
            ask = {"type": "relay_request", "party_id": party["party_id"]}
            first = (await host.call(**ask, to=guest.peer_id))["ticket"]
            await guest.push("relay_offer")
            # Within the affinity window, on the same relay: a fresh session all the same.
            renewed = (await host.call(**ask, to=guest.peer_id, failed_session=first["session_id"]))["ticket"]
            assert renewed["session_id"] != first["session_id"]
            assert renewed["relay"] == first["relay"]
            offered = (await guest.push("relay_offer"))["ticket"]
            assert offered["session_id"] == renewed["session_id"]
            # The other side saw the same failure: it gets the new session, not a third one.
            late = (await guest.call(**ask, to=host.peer_id, failed_session=first["session_id"]))["ticket"]
            assert late["session_id"] == renewed["session_id"]
            await host.push("relay_offer")
            # Asking for the other relay, within the affinity: the live session still wins ...
            other = (await guest.call(**ask, to=host.peer_id, relay=relays[1]))["ticket"]
            assert other["session_id"] == renewed["session_id"]
            await host.push("relay_offer")
            # ... until it is reported: then a new one on the relay asked for, never an old one.
            moved = (await guest.call(**ask, to=host.peer_id, relay=relays[1],
                                      failed_session=renewed["session_id"]))["ticket"]
            await host.push("relay_offer")
            assert moved["relay"] == relays[1]
            assert moved["session_id"] not in (first["session_id"], renewed["session_id"])
            for _ in range(3):
                again = (await host.call(**ask, to=guest.peer_id, relay=relays[0]))["ticket"]
                await guest.push("relay_offer")
                assert again["session_id"] == moved["session_id"]
            bad = await host.call(**ask, to=guest.peer_id, failed_session="not a session id!")
            assert bad["code"] == p.BAD_MESSAGE
    run(scenario())
