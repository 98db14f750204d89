"""STUN detection on loopback against a fake server, and fuzzing of the response parser."""

from __future__ import annotations

import os
import socket
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.types import NAT_OPEN, NAT_PORT_RESTRICTED, NatDetected, NatDetectionFailed
from mesh.nat import stun_wire
from mesh.nat.stun import StunNatDetector
from tests.nat.fake_stun import FakeStun


def test_open_host_is_detected_with_its_mapping() -> None:
    with FakeStun(honour_change=True) as server:
        detector = StunNatDetector([f"127.0.0.1:{server.address[1]}"], node_id="n1", timeout_s=0.2)
        info, event = detector.detect_event()
    assert info is not None and info.nat_type == NAT_OPEN
    assert (info.public_ip, info.local_ip) == ("127.0.0.1", "127.0.0.1")
    assert info.public_port == info.local_port
    assert isinstance(event, NatDetected) and event.public_port == info.public_port


def test_firewalled_public_host_keeps_the_first_mapping() -> None:
    with FakeStun(honour_change=False) as server:
        info = StunNatDetector([f"127.0.0.1:{server.address[1]}"], timeout_s=0.1).detect()
    assert info is not None and info.nat_type == NAT_PORT_RESTRICTED
    assert info.public_ip == "127.0.0.1" and info.public_port == info.local_port


def test_malformed_responses_are_dropped_and_counted() -> None:
    with FakeStun(honour_change=True, junk_first=2) as server:
        detector = StunNatDetector([f"127.0.0.1:{server.address[1]}"], timeout_s=0.3)
        info = detector.detect()
    assert info is not None and info.nat_type == NAT_OPEN
    assert detector.malformed >= 4


def test_no_answer_means_relay_only() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        detector = StunNatDetector([f"127.0.0.1:{silent.getsockname()[1]}"], node_id="n2", timeout_s=0.05)
        info, event = detector.detect_event()
        assert event.stun_servers == (f"127.0.0.1:{silent.getsockname()[1]}",)
    assert info is None
    assert isinstance(event, NatDetectionFailed) and "no answer" in event.reason


def test_second_server_is_tried_when_the_first_is_silent() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, FakeStun() as server:
        silent.bind(("127.0.0.1", 0))
        info = StunNatDetector([f"127.0.0.1:{silent.getsockname()[1]}", f"127.0.0.1:{server.address[1]}"],
                               timeout_s=0.05).detect()
    assert info is not None and info.stun_server == f"127.0.0.1:{server.address[1]}"


def test_detection_shares_a_port_that_another_socket_holds() -> None:
    """The WireGuard port is bound by wireguard-go: detection speaks from it via a raw socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wireguard, FakeStun() as server:
        wireguard.bind(("0.0.0.0", 0))
        port = wireguard.getsockname()[1]
        info = StunNatDetector([f"127.0.0.1:{server.address[1]}"], local_port=port, timeout_s=0.2).detect()
    assert info is not None and info.nat_type == NAT_OPEN
    assert info.public_port == port == info.local_port


# ---------------------------------------------------------------- fuzzing

_TID = bytes.fromhex("2112a442") + os.urandom(12)
_VALID = stun_wire.encode_response(_TID, ("192.0.2.7", 40000), ("203.0.113.2", 3478), ("203.0.113.3", 3479))


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
    buffer = bytearray(data)
    for index, value in flips:
        buffer[index % len(buffer)] = value
    return bytes(buffer[:max(0, len(buffer) - cut)]) + tail


_responses = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda body: b"\x01\x01" + len(body).to_bytes(2, "big") + _TID + body, st.binary(max_size=80)),
    st.builds(_mutate, st.just(_VALID), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)),
                                                 max_size=5), st.integers(0, 12), st.binary(max_size=8)),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(_responses)
def test_parser_never_raises_and_canonical_form_is_stable(data: bytes) -> None:
    response = stun_wire.parse_response(data)
    if response is not None:
        again = stun_wire.parse_response(stun_wire.canonical(response))
        assert again is not None and again.mapped == response.mapped
        assert again.transaction_id == response.transaction_id


def test_parser_reads_xor_mapped_address() -> None:
    xport = 40000 ^ 0x2112
    xip = int.from_bytes(socket.inet_aton("192.0.2.7"), "big") ^ 0x2112A442
    attr = (0x0020).to_bytes(2, "big") + (8).to_bytes(2, "big") + b"\0\x01" + xport.to_bytes(2, "big") \
        + xip.to_bytes(4, "big")
    software = (0x8022).to_bytes(2, "big") + (5).to_bytes(2, "big") + b"stund\0\0\0"
    body = software + attr
    data = b"\x01\x01" + len(body).to_bytes(2, "big") + _TID + body
    response = stun_wire.parse_response(data)
    assert response is not None and response.mapped == ("192.0.2.7", 40000)


_mutations = st.lists(st.one_of(
    st.binary(max_size=80),
    st.tuples(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4), st.integers(0, 12),
              st.binary(max_size=8))), min_size=1, max_size=3)


Mutation = bytes | tuple[list[tuple[int, int]], int, bytes]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(_mutations)
def test_detector_survives_hostile_servers(replies: list[Mutation]) -> None:
    """A server answering garbage and mangled responses to each request's transaction id:
    detection never crashes or hangs, and it counts what it dropped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hostile:
        hostile.bind(("127.0.0.1", 0))
        stop = threading.Event()

        def serve() -> None:
            hostile.settimeout(0.02)
            while not stop.is_set():
                try:
                    request, addr = hostile.recvfrom(2048)
                except TimeoutError:
                    continue
                valid = stun_wire.encode_response(request[4:20], addr, hostile.getsockname())
                for reply in replies:
                    hostile.sendto(reply if isinstance(reply, bytes) else _mutate(valid, *reply), addr)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            start = time.monotonic()
            detector = StunNatDetector([f"127.0.0.1:{hostile.getsockname()[1]}"], timeout_s=0.01)
            detector.detect()
            assert time.monotonic() - start < 5
        finally:
            stop.set()
            thread.join()


def test_a_recent_detection_is_reused_and_an_old_one_is_not() -> None:
    with FakeStun(honour_change=True) as server:
        detector = StunNatDetector([f"127.0.0.1:{server.address[1]}"], timeout_s=0.2)
        first = detector.detect()
        asked = server.requests
        assert first is not None and asked > 0
        assert detector.detect() == first and server.requests == asked
        detector.max_age_s = 0.0
        again = detector.detect()  # a fresh detection, from a fresh ephemeral port here
        assert again is not None and again.nat_type == first.nat_type and server.requests > asked


def test_a_mapping_check_is_one_binding_from_the_wireguard_port() -> None:
    """The port is held by another socket (wireguard-go): the check speaks from it through a
    raw socket, sends one request (no classification) and reads the mapping back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wireguard, FakeStun(junk_first=1) as server:
        wireguard.bind(("0.0.0.0", 0))
        port = wireguard.getsockname()[1]
        detector = StunNatDetector([f"127.0.0.1:{server.address[1]}"], local_port=port, timeout_s=0.2)
        assert detector.mapping() == ("127.0.0.1", port)
        assert server.requests == 1 and detector.malformed == 1


def test_a_mapping_check_with_no_answer_is_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        detector = StunNatDetector([f"127.0.0.1:{silent.getsockname()[1]}"], timeout_s=0.05)
        assert detector.mapping() is None
