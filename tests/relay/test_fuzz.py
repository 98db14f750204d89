"""Fuzzing the relay's packet and control parsing: no crash, no hang, malformed input counted."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.relay import RelayConfig, RelayServer, issue_tickets, wire
from tests.relay.helpers import SECRET, Peer, counters_when, hello_bytes, wg_packet

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    buffer = bytearray(data)
    for index, value in flips:
        buffer[index % len(buffer)] = value
    return bytes(buffer[:max(0, len(buffer) - cut)])


_TICKET = issue_tickets(SECRET, "127.0.0.1:1", "party", "alice", "bob")[0]
_VALID = [hello_bytes(_TICKET, key=os.urandom(32)), wire.encode_hello_ok(os.urandom(16), 1, True),
          wire.encode_refused(os.urandom(16), wire.REPLAYED), wire.encode_ping(5), wg_packet(1)]

datagrams = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda tail: wire.MAGIC + tail, st.binary(max_size=200)),
    st.builds(mutate, st.sampled_from(_VALID),
              st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
              st.integers(0, 40)),
)


@FUZZ
@given(datagrams)
def test_parsers_never_raise(data: bytes) -> None:
    hello = wire.parse_hello(data)
    if hello is not None:
        assert hello.signed + hello.mac == data
        assert wire.hello_mac_ok(hello, os.urandom(32)) is False
    wire.parse_hello_ok(data)
    wire.parse_refused(data)
    wire.parse_probe(data, wire.PING)
    wire.parse_probe(data, wire.PONG)
    wire.control_type(data)
    assert not (wire.is_wireguard(data) and wire.is_control(data))


@FUZZ
@given(st.binary(max_size=200))
def test_a_mutated_hello_never_authenticates(noise: bytes) -> None:
    valid = hello_bytes(_TICKET)
    if noise and noise != valid[: len(noise)]:
        tampered = noise + valid[len(noise):]
        hello = wire.parse_hello(tampered)
        assert hello is None or not wire.hello_mac_ok(hello, _TICKET.key) or tampered == valid


@pytest.fixture(scope="module", params=[True, False], ids=["recvmmsg", "recvfrom"])
def relay(request: pytest.FixtureRequest) -> Iterator[RelayServer]:
    server = RelayServer(SECRET, ("127.0.0.1", 0),
                         config=RelayConfig(housekeeping_s=0.02, batched=bool(request.param)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_relay_survives_garbage_counts_it_and_keeps_forwarding(relay: RelayServer) -> None:
    a, b = Peer(relay), Peer(relay)
    pair = issue_tickets(SECRET, f"127.0.0.1:{relay.address[1]}", "party", "alice", "bob")
    a.hello(pair[0])
    b.hello(pair[1])
    before = relay.counters()
    sent: list[bytes] = []

    @FUZZ
    @given(datagrams)
    def blast(data: bytes) -> None:
        a.send(data)
        sent.append(data)

    blast()
    junk = [d for d in sent if not wire.is_wireguard(d) and not (
        wire.control_type(d) == wire.PING and wire.parse_probe(d, wire.PING) is not None)
        and not (wire.control_type(d) in (wire.HELLO, wire.BYE) and wire.parse_hello(d) is not None)]
    counters = counters_when(
        relay, lambda c: c.dropped_malformed - before.dropped_malformed >= len(junk), timeout_s=5)
    assert counters.dropped_malformed - before.dropped_malformed == len(junk)
    forwarded = [d for d in b.drain() if not wire.is_control(d)]
    assert all(wire.is_wireguard(d) for d in forwarded)  # only WireGuard-shaped packets crossed
    start = time.monotonic()
    a.send(wg_packet(99))
    assert wg_packet(99) in b.drain()
    assert time.monotonic() - start < 1.0
