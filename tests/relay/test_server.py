"""The relay server on loopback: forwarding, authentication, replay, rate limits, expiry, events."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from events.streams import relay_server_stream
from events.types import (
    RelayCountersSampled,
    RelayServerStarted,
    RelayServerStopped,
    RelaySessionAllocated,
    RelaySessionExpired,
)
from mesh.interfaces import MeshError
from mesh.relay import (
    ProxyRelayClient,
    RelayConfig,
    RelayRefused,
    RelayServer,
    issue_tickets,
    probe_relay,
    wire,
)
from mesh.relay.tickets import RelayTicket
from store.base import InMemoryRecorder
from tests.relay.helpers import SECRET, Peer, counters_when, hello_bytes, wait_for, wg_packet


@pytest.fixture
def recorder() -> InMemoryRecorder:
    return InMemoryRecorder()


@pytest.fixture(params=[True, False], ids=["recvmmsg", "recvfrom"])
def batched(request: pytest.FixtureRequest) -> bool:
    """Every relay test runs on both hot paths: batched through ctypes, and plain sockets."""
    return bool(request.param)


@pytest.fixture
def relay(recorder: InMemoryRecorder, batched: bool) -> Iterator[RelayServer]:
    server = RelayServer(SECRET, ("127.0.0.1", 0), recorder=recorder,
                         config=RelayConfig(sample_interval_s=0.3, idle_timeout_s=30, batched=batched))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tickets(relay: RelayServer, **kwargs: object) -> tuple[RelayTicket, RelayTicket]:
    return issue_tickets(SECRET, f"127.0.0.1:{relay.address[1]}", "party1", "alice", "bob",
                         **kwargs)  # type: ignore[arg-type]


def bound_pair(relay: RelayServer) -> tuple[Peer, Peer, tuple[RelayTicket, RelayTicket]]:
    a, b = Peer(relay), Peer(relay)
    pair = tickets(relay)
    assert wire.parse_hello_ok(a.hello(pair[0])) is not None
    assert wire.parse_hello_ok(b.hello(pair[1])) is not None
    return a, b, pair


def test_forwards_wireguard_packets_both_ways_between_bound_peers(relay: RelayServer) -> None:
    a, b, _ = bound_pair(relay)
    a.send(wg_packet(1))
    assert b.sock.recv(2048) == wg_packet(1)
    b.send(wg_packet(2, 148 - 148 % 16))
    assert a.sock.recv(2048) == wg_packet(2, 144)
    counters = counters_when(relay, lambda c: c.forwarded_packets == 2)
    assert counters.forwarded_packets == 2
    assert counters.hellos_accepted == 2


def test_unauthenticated_source_gets_nothing_forwarded(relay: RelayServer) -> None:
    a, b, _ = bound_pair(relay)
    intruder = Peer(relay)
    for seq in range(50):
        intruder.send(wg_packet(seq))
    assert a.drain() == [] and b.drain() == [] and intruder.drain() == []
    counters = counters_when(relay, lambda c: c.dropped_unauthenticated == 50)
    assert counters.dropped_unauthenticated == 50
    assert counters.forwarded_packets == 0


def test_non_wireguard_payload_from_a_bound_peer_is_not_forwarded(relay: RelayServer) -> None:
    a, b, _ = bound_pair(relay)
    a.send(b"GET / HTTP/1.1\r\n\r\n")
    a.send(b"\x04\0\0\0" + b"y" * 33)  # transport message of an impossible size
    assert b.drain() == []
    assert counters_when(relay, lambda c: c.dropped_malformed == 2).dropped_malformed == 2


def test_wrong_key_and_wrong_side_are_refused(relay: RelayServer) -> None:
    first, second = tickets(relay)
    mallory = Peer(relay)
    refused = wire.parse_refused(mallory.hello(first, key=os.urandom(32)))
    assert refused is not None and refused[1] == wire.BAD_MAC
    # peer b's key cannot speak for side a
    refused = wire.parse_refused(mallory.hello(first, key=second.key))
    assert refused is not None and refused[1] == wire.BAD_MAC
    with pytest.raises(RelayRefused, match="bad_mac"):
        ProxyRelayClient(lambda *_: RelayTicket(**{**first.__dict__, "key_hex": "00" * 32})).allocate(
            "party1", "bob", first.relay)
    assert relay.active_sessions() == 0


def test_expired_ticket_and_stale_hello_are_refused(relay: RelayServer) -> None:
    old, _ = tickets(relay, ttl_s=60, now=time.time() - 120)
    peer = Peer(relay)
    refused = wire.parse_refused(peer.hello(old))
    assert refused is not None and refused[1] == wire.EXPIRED
    fresh, _ = tickets(relay)
    refused = wire.parse_refused(peer.hello(fresh, timestamp_ms=int((time.time() - 300) * 1000)))
    assert refused is not None and refused[1] == wire.STALE
    assert relay.counters().hellos_refused == {"expired": 1, "stale": 1} or counters_when(
        relay, lambda c: c.hellos_refused == {"expired": 1, "stale": 1}).hellos_refused == {
        "expired": 1, "stale": 1}


def test_replayed_hello_is_refused_and_does_not_steal_the_binding(relay: RelayServer,
                                                                   recorder: InMemoryRecorder) -> None:
    a, b, pair = bound_pair(relay)
    captured = hello_bytes(pair[0], cookie=a.cookie)
    a.send(captured)
    assert wire.parse_hello_ok(a.recv_control()) is not None
    attacker = Peer(relay)
    attacker.send(captured)
    refused = wire.parse_refused(attacker.recv_control())
    assert refused is not None and refused[1] == wire.REPLAYED
    b.send(wg_packet(7))
    assert a.sock.recv(2048) == wg_packet(7)
    assert attacker.drain() == []

    def refused_in_log() -> int:
        return sum(r.event.hellos_refused for r in recorder.read_stream(relay_server_stream(relay.name))
                   if isinstance(r.event, RelayCountersSampled))

    assert wait_for(lambda: refused_in_log() == 1)


def test_flood_of_one_session_does_not_starve_another(recorder: InMemoryRecorder, batched: bool) -> None:
    config = RelayConfig(session_pps=5_000, session_burst=500, sample_interval_s=0.3, batched=batched)
    with RelayServer(SECRET, ("127.0.0.1", 0), recorder=recorder, config=config) as relay:
        flood_a, _flood_b, _ = bound_pair(relay)
        quiet_a, quiet_b = Peer(relay), Peer(relay)
        quiet = issue_tickets(SECRET, "x:1", "party2", "carol", "dave")
        quiet_a.hello(quiet[0])
        quiet_b.hello(quiet[1])
        stop = threading.Event()

        def flood() -> None:
            packet = wg_packet(0)
            deadline = time.monotonic() + 10.0
            for _ in range(2_000_000):  # bounded in count, in time, and by `stop`
                if stop.is_set() or time.monotonic() > deadline:
                    return
                flood_a.send(packet)

        flooder = threading.Thread(target=flood)
        flooder.start()
        received = 0
        quiet_b.sock.settimeout(0.5)
        try:
            # The quiet session starts only once the flood is really being limited, so the
            # test cannot pass on a machine too busy to flood at all.
            limited_before = counters_when(relay, lambda c: c.dropped_rate_limited > 0, 5.0)
            assert limited_before.dropped_rate_limited > 0, "the flood never reached the rate limit"
            for seq in range(200):
                quiet_a.send(wg_packet(seq))
                try:
                    while quiet_b.sock.recv(2048) != wg_packet(seq):
                        pass
                    received += 1
                except TimeoutError:
                    pass
            flooding_throughout = flooder.is_alive()
        finally:
            stop.set()
            flooder.join()
        assert received >= 196, f"the quiet session got {received}/200 through a flood"
        assert flooding_throughout, "the flood stopped before the quiet session finished"
        # counters() is flushed from the loop every sample interval
        after = counters_when(relay, lambda c: c.dropped_rate_limited > limited_before.dropped_rate_limited)
        assert after.dropped_rate_limited > limited_before.dropped_rate_limited


def test_idle_session_expires_and_then_forwards_nothing(recorder: InMemoryRecorder, batched: bool) -> None:
    config = RelayConfig(idle_timeout_s=0.3, sample_interval_s=0.2, housekeeping_s=0.05, batched=batched)
    with RelayServer(SECRET, ("127.0.0.1", 0), recorder=recorder, config=config) as relay:
        a, b, pair = bound_pair(relay)
        assert wait_for(lambda: relay.active_sessions() == 0, 3)
        a.send(wg_packet(1))
        assert b.drain() == []
    stream = recorder.read_stream(relay_server_stream(relay.name))
    expired = [r.event for r in stream if isinstance(r.event, RelaySessionExpired)]
    assert [(e.session_id, e.reason) for e in expired] == [(pair[0].session_id, "idle")]


def test_bye_releases_the_session(relay: RelayServer, recorder: InMemoryRecorder) -> None:
    a, b, pair = bound_pair(relay)
    a.send(hello_bytes(pair[0], kind=wire.BYE))
    b.send(hello_bytes(pair[1], kind=wire.BYE))
    assert wait_for(lambda: relay.active_sessions() == 0)
    a.send(wg_packet(3))
    assert b.drain() == []


def test_events_record_lifecycle_and_aggregated_counters(recorder: InMemoryRecorder, batched: bool) -> None:
    config = RelayConfig(sample_interval_s=0.2, batched=batched)
    with RelayServer(SECRET, ("127.0.0.1", 0), recorder=recorder, config=config) as relay:
        a, b, _ = bound_pair(relay)
        for seq in range(300):
            a.send(wg_packet(seq))
        got = 0
        while got < 300:
            b.sock.recv(2048)
            got += 1
        time.sleep(0.5)
    events = [r.event for r in recorder.read_stream(relay_server_stream(relay.name))]
    kinds = [type(e) for e in events]
    assert kinds[0] is RelayServerStarted and kinds[-1] is RelayServerStopped
    assert kinds.count(RelaySessionAllocated) == 1
    samples = [e for e in events if isinstance(e, RelayCountersSampled)]
    assert 1 <= len(samples) < 20  # aggregated on an interval, never a row a packet
    assert sum(s.forwarded_packets for s in samples) == 300
    assert sum(s.hellos_refused for s in samples) == 0 and sum(s.dropped_no_peer for s in samples) == 0
    assert all("key" not in repr(e.to_payload()) for e in events)


def test_proxy_client_carries_wireguard_traffic(relay: RelayServer) -> None:
    wg_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wg_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wg_a.bind(("127.0.0.1", 0))
    wg_b.bind(("127.0.0.1", 0))
    wg_a.settimeout(2)
    wg_b.settimeout(2)
    first, second = tickets(relay)
    client_a = ProxyRelayClient(lambda *_: first, wg_port=wg_a.getsockname()[1])
    client_b = ProxyRelayClient(lambda *_: second, wg_port=wg_b.getsockname()[1])
    try:
        alloc_a = client_a.allocate("party1", "bob", first.relay)
        alloc_b = client_b.allocate("party1", "alice", second.relay)
        assert alloc_a.session_id == alloc_b.session_id
        host, port = alloc_a.endpoint.split(":")
        wg_a.sendto(wg_packet(1), (host, int(port)))  # what WireGuard does with its peer endpoint
        data, source = wg_b.recvfrom(2048)
        assert data == wg_packet(1)
        assert source == tuple_of(alloc_b.endpoint)  # B's WireGuard sees its own proxy as the peer
        wg_b.sendto(wg_packet(2), source)
        assert wg_a.recvfrom(2048)[0] == wg_packet(2)
        client_a.release(alloc_a)
        client_b.release(alloc_b)
        assert wait_for(lambda: relay.active_sessions() == 0)
    finally:
        client_a.close()
        client_b.close()
        wg_a.close()
        wg_b.close()


def tuple_of(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.split(":")
    return host, int(port)


def test_probe_measures_rtt_and_reports_silence(relay: RelayServer) -> None:
    rtt = probe_relay(f"127.0.0.1:{relay.address[1]}", 1.0)
    assert rtt is not None and 0 < rtt < 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        assert probe_relay(f"127.0.0.1:{silent.getsockname()[1]}", 0.2) is None
    assert counters_when(relay, lambda c: c.probes == 1).probes == 1


def test_no_answer_is_a_mesh_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        first, _ = issue_tickets(SECRET, f"127.0.0.1:{silent.getsockname()[1]}", "p", "a", "b")
        client = ProxyRelayClient(lambda *_: first)
        with pytest.raises(MeshError, match="did not answer"):
            client.allocate("p", "b", first.relay)


def test_large_wireguard_datagrams_cross_both_hot_paths(relay: RelayServer) -> None:
    a, b, _ = bound_pair(relay)
    big = wg_packet(1, 9008)  # a jumbo-MTU transport message
    a.send(big)
    assert b.sock.recv(65535) == big


def test_proxy_ignores_local_senders_other_than_wireguard(relay: RelayServer) -> None:
    first, second = tickets(relay)
    wg_a, wg_b, other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    for sock in (wg_a, wg_b, other):
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.5)
    client_a = ProxyRelayClient(lambda *_: first, wg_port=wg_a.getsockname()[1])
    client_b = ProxyRelayClient(lambda *_: second, wg_port=wg_b.getsockname()[1])
    try:
        alloc_a = client_a.allocate("party1", "bob", first.relay)
        client_b.allocate("party1", "alice", second.relay)
        other.sendto(wg_packet(5), tuple_of(alloc_a.endpoint))  # another local process
        with pytest.raises(TimeoutError):
            wg_b.recvfrom(2048)
        wg_a.sendto(wg_packet(6), tuple_of(alloc_a.endpoint))
        assert wg_b.recvfrom(2048)[0] == wg_packet(6)
    finally:
        client_a.close()
        client_b.close()
        for sock in (wg_a, wg_b, other):
            sock.close()


def test_a_proxy_whose_packets_go_unanswered_says_hello_again_every_stall_interval(
        relay: RelayServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut uplink or a new NAT mapping: the relay hears the new address within STALL_S of
    WireGuard sending, and while nothing answers the HELLOs stay one per STALL_S."""
    import mesh.relay.client as relay_client

    monkeypatch.setattr(relay_client, "STALL_S", 0.3)
    wg_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wg_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (wg_a, wg_b):
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
    first, second = tickets(relay)
    client_a = ProxyRelayClient(lambda *_: first, wg_port=wg_a.getsockname()[1])
    client_b = ProxyRelayClient(lambda *_: second, wg_port=wg_b.getsockname()[1])
    try:
        alloc_a = client_a.allocate("party1", "bob", first.relay)
        proxy_a = client_a.proxy(alloc_a)
        assert proxy_a is not None
        target = tuple_of(alloc_a.endpoint)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # bob is not there: nothing comes back
            wg_a.sendto(wg_packet(1), target)
            time.sleep(0.1)
        assert 3 <= proxy_a.stall_hellos <= 5, proxy_a.stall_hellos
        alloc_b = client_b.allocate("party1", "alice", second.relay)
        wg_a.sendto(wg_packet(2), target)
        data, source = wg_b.recvfrom(2048)
        assert data == wg_packet(2)
        wg_b.sendto(wg_packet(3), source)
        assert wg_a.recvfrom(2048)[0] == wg_packet(3)
        answered = proxy_a.stall_hellos
        time.sleep(1.0)  # answered, and quiet: no more HELLOs than the interval's
        assert proxy_a.stall_hellos == answered
        client_b.release(alloc_b)
    finally:
        client_a.close()
        client_b.close()
        wg_a.close()
        wg_b.close()


def test_a_rebind_says_hello_at_once(relay: RelayServer) -> None:
    """The host's NAT mapping moved: every session says HELLO now (the relay answers it), not at
    its next interval or after WireGuard's next unanswered packet."""
    first, _ = tickets(relay)
    client = ProxyRelayClient(lambda *_: first, rehello_s=60.0)
    try:
        client.allocate("party1", "bob", first.relay)
        accepted = counters_when(relay, lambda c: c.hellos_accepted >= 1).hellos_accepted
        assert client.rebind() == 1
        assert counters_when(relay, lambda c: c.hellos_accepted > accepted).hellos_accepted == accepted + 1
    finally:
        client.close()
