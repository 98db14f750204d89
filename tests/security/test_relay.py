"""Attacks on the relay server, run against a real RelayServer on loopback.

Each test replays what an attacker on the internet (forged source addresses, a raw
socket) or a ticket holder (a node of the party) would send, and shows the relay now
gives it nothing: no binding, no amplification, no session past its ticket, no
unbounded state.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from events.streams import relay_server_stream
from events.types import RelaySessionExpired
from mesh.relay import RelayConfig, RelayServer, issue_tickets, wire
from mesh.relay.tickets import RelayTicket, revoke_key
from store.base import InMemoryRecorder
from tests.relay.helpers import SECRET, Peer, hello_bytes, wait_for, wg_packet
from tests.security.forge import udp_from


@pytest.fixture
def recorder() -> InMemoryRecorder:
    return InMemoryRecorder()


def start_relay(recorder: InMemoryRecorder, **config: object) -> RelayServer:
    server = RelayServer(SECRET, ("127.0.0.1", 0), recorder=recorder,
                         config=RelayConfig(sample_interval_s=0.3, **config))  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def relay(recorder: InMemoryRecorder) -> Iterator[RelayServer]:
    server = start_relay(recorder)
    try:
        yield server
    finally:
        server.stop()


def pair_on(relay: RelayServer, peer_a: str = "alice", peer_b: str = "bob",
            ttl_s: int = 3600) -> tuple[RelayTicket, RelayTicket]:
    return issue_tickets(SECRET, f"127.0.0.1:{relay.address[1]}", "party1", peer_a, peer_b, ttl_s=ttl_s)


def victim_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(0.3)
    return sock


def received(sock: socket.socket, quiet_s: float = 0.5) -> list[bytes]:
    got: list[bytes] = []
    sock.settimeout(quiet_s)
    try:
        while True:
            got.append(sock.recv(65535))
    except TimeoutError:
        return got


def test_a_hello_with_a_forged_source_never_binds_the_victim(relay: RelayServer, require_root: None) -> None:
    """The attacker holds both tickets of a session (a party member) and floods a victim through it."""
    ours, other = pair_on(relay)
    victim = victim_socket("127.0.0.2")
    attacker = Peer(relay)
    try:
        forged = hello_bytes(ours)
        udp_from(victim.getsockname(), ("127.0.0.1", relay.address[1]), forged)
        assert wire.parse_hello_ok(attacker.hello(other)) is not None
        bound_peer = wire.parse_hello_ok(attacker.hello(other))
        assert bound_peer is not None and bound_peer[2] is False, "the victim's address got bound"
        for seq in range(50):
            attacker.send(wg_packet(seq, 1024))
        got = received(victim)
        # All the victim ever sees is one cookie, smaller than the HELLO that caused it.
        assert [wire.parse_cookie(data) is not None for data in got] == [True]
        assert len(got[0]) < len(forged)
        assert wait_for(lambda: relay.counters().dropped_no_peer >= 50)
        assert relay.counters().forwarded_packets == 0
    finally:
        victim.close()
        attacker.close()


def test_a_captured_cookie_is_useless_from_another_address(relay: RelayServer) -> None:
    ours, _ = pair_on(relay)
    alice, mallory = Peer(relay), Peer(relay)
    try:
        assert wire.parse_hello_ok(alice.hello(ours)) is not None
        mallory.send(hello_bytes(ours, cookie=alice.cookie))  # fresh nonce, alice's cookie
        answer = mallory.recv_control()
        assert wire.parse_cookie(answer) is not None  # only its own cookie, never a binding
        assert wire.parse_hello_ok(answer) is None
    finally:
        alice.close()
        mallory.close()


def test_a_node_cannot_pair_with_itself(relay: RelayServer) -> None:
    same = pair_on(relay, "mallory", "mallory")
    one, two = Peer(relay), Peer(relay)
    try:
        refused = wire.parse_refused(one.hello(same[0]))
        assert refused is not None and refused[1] == wire.SELF_PAIRED
        # Nor with one address on both sides of an honest-looking session.
        a_side, b_side = pair_on(relay, "mallory", "mallory-2")
        assert wire.parse_hello_ok(two.hello(a_side)) is not None
        refused = wire.parse_refused(two.hello(b_side))
        assert refused is not None and refused[1] == wire.SELF_PAIRED
    finally:
        one.close()
        two.close()


def test_a_session_ends_at_its_ticket_expiry(recorder: InMemoryRecorder) -> None:
    relay = start_relay(recorder)
    a, b = Peer(relay), Peer(relay)
    try:
        first, second = pair_on(relay, ttl_s=2)
        assert wire.parse_hello_ok(a.hello(first)) is not None
        assert wire.parse_hello_ok(b.hello(second)) is not None
        a.send(wg_packet(1))
        assert b.sock.recv(2048) == wg_packet(1)
        assert wait_for(lambda: relay.active_sessions() == 0, timeout_s=5.0)
        a.send(wg_packet(2))
        assert received(b.sock) == []
        refused = wire.parse_refused(a.hello(first))
        assert refused is not None and refused[1] == wire.EXPIRED
        assert wait_for(lambda: any(
            isinstance(r.event, RelaySessionExpired) and r.event.reason == "ticket expired"
            for r in recorder.read_stream(relay_server_stream(relay.name))))
    finally:
        a.close()
        b.close()
        relay.stop()


def test_a_revoked_session_ends_and_its_tickets_stop_working(relay: RelayServer) -> None:
    first, second = pair_on(relay)
    a, b = Peer(relay), Peer(relay)
    try:
        assert wire.parse_hello_ok(a.hello(first)) is not None
        assert wire.parse_hello_ok(b.hello(second)) is not None
        forged = wire.encode_revoke(os.urandom(32), first.session_id, first.expiry_s,
                                    int(time.time() * 1000), os.urandom(16))
        a.send(forged)  # a member cannot revoke: only the secret's holders can
        time.sleep(0.3)
        assert relay.active_sessions() == 1
        revoke = wire.encode_revoke(revoke_key(SECRET), first.session_id, first.expiry_s,
                                    int(time.time() * 1000), os.urandom(16))
        a.send(revoke)
        assert wait_for(lambda: relay.active_sessions() == 0)
        refused = wire.parse_refused(b.hello(second))
        assert refused is not None and refused[1] == wire.REVOKED
        a.send(wg_packet(3))
        assert received(b.sock) == []
    finally:
        a.close()
        b.close()


def test_one_peer_cannot_hold_more_than_its_session_cap(recorder: InMemoryRecorder) -> None:
    relay = start_relay(recorder, max_sessions_per_peer=3)
    peers = [Peer(relay) for _ in range(4)]
    try:
        answers = [peer.hello(pair_on(relay, "mallory", f"friend{index}")[0])
                   for index, peer in enumerate(peers)]
        assert [wire.parse_hello_ok(a) is not None for a in answers] == [True, True, True, False]
        refused = wire.parse_refused(answers[3])
        assert refused is not None and refused[1] == wire.LIMITED
        assert relay.active_sessions() == 3
    finally:
        for peer in peers:
            peer.close()
        relay.stop()


def test_a_hello_flood_from_a_ticket_holder_keeps_bounded_nonce_state(recorder: InMemoryRecorder) -> None:
    relay = start_relay(recorder, max_hellos_per_session=16)
    ticket, _ = pair_on(relay)
    peer = Peer(relay)
    try:
        assert wire.parse_hello_ok(peer.hello(ticket)) is not None
        for _ in range(200):
            peer.send(hello_bytes(ticket, cookie=peer.cookie))
        answers = peer.drain(0.5)
        accepted = sum(wire.parse_hello_ok(a) is not None for a in answers)
        limited = sum((r := wire.parse_refused(a)) is not None and r[1] == wire.LIMITED for a in answers)
        assert accepted == 15 and limited >= 1  # refusals are answers: rate-limited per source
        assert accepted + limited <= 15 + RelayConfig().replies_per_source_per_s * 2
        assert relay.state_size()["nonces"] == 16
    finally:
        peer.close()
        relay.stop()


def test_ping_never_answers_more_than_it_got_and_is_rate_limited(recorder: InMemoryRecorder,
                                                                 require_root: None) -> None:
    relay = start_relay(recorder, replies_per_source_per_s=10)
    victim = victim_socket("127.0.0.3")
    try:
        ping = wire.encode_ping(7, size=200)
        sent = 0
        start = time.monotonic()
        while sent < 300 and time.monotonic() - start < 0.5:  # well inside one second
            udp_from(victim.getsockname(), ("127.0.0.1", relay.address[1]), ping)
            sent += 1
        got = received(victim)
        assert sent == 300
        assert 1 <= len(got) <= 20  # at most two one-second windows of 10
        assert all(len(data) <= len(ping) for data in got)
        assert relay.counters().replies_suppressed >= sent - 20
    finally:
        victim.close()
        relay.stop()


def test_a_member_cannot_use_up_a_victims_sessions(recorder: InMemoryRecorder) -> None:
    """Finding 7: sessions "with" the victim that only the member bound count against the member
    only; the victim's own HELLO on its own session still binds."""
    relay = start_relay(recorder, max_sessions_per_peer=4)
    mallory = [Peer(relay) for _ in range(6)]
    victim = Peer(relay)
    try:
        answers = [peer.hello(pair_on(relay, "mallory", "victim")[0]) for peer in mallory]
        assert [wire.parse_hello_ok(a) is not None for a in answers] == [True] * 4 + [False] * 2
        own, _ = pair_on(relay, "victim", "friend")
        assert wire.parse_hello_ok(victim.hello(own)) is not None  # was LIMITED: 4 sessions named it
        assert relay.active_sessions() == 5
    finally:
        for peer in [*mallory, victim]:
            peer.close()
        relay.stop()
