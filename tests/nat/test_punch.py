"""Hole punching on loopback from ports held by other sockets (as wireguard-go holds its port)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.types import NAT_OPEN, NAT_PORT_RESTRICTED, NAT_SYMMETRIC
from mesh.interfaces import MeshError, NatInfo, PunchResult
from mesh.nat import punch
from mesh.nat.punch import UdpHolePuncher, should_try_direct


@pytest.fixture
def held_ports() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two sockets standing in for two wireguard-go instances."""
    pair = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        sock.settimeout(0.5)
        pair.append(sock)
    yield pair[0], pair[1]
    for sock in pair:
        sock.close()


def punch_both(a: UdpHolePuncher, b: UdpHolePuncher, session_a: str, session_b: str,
               timeout_s: float = 2.0) -> tuple[PunchResult, PunchResult]:
    results: dict[str, PunchResult] = {}
    start_at = time.time() + 0.1
    thread = threading.Thread(target=lambda: results.__setitem__(
        "b", b.punch(session_b, a.candidates(), timeout_s, start_at=start_at)))
    thread.start()
    results["a"] = a.punch(session_a, b.candidates(), timeout_s, start_at=start_at)
    thread.join()
    return results["a"], results["b"]


def test_both_sides_confirm_the_path_with_acks(held_ports: tuple[socket.socket, socket.socket]) -> None:
    port_a, port_b = (sock.getsockname()[1] for sock in held_ports)
    a = UdpHolePuncher(port_a, lan_addresses=["127.0.0.1"])
    b = UdpHolePuncher(port_b, lan_addresses=["127.0.0.1"])
    result_a, result_b = punch_both(a, b, "secret-1", "secret-1")
    assert result_a.succeeded and result_b.succeeded
    assert result_a.endpoint == f"127.0.0.1:{port_b}" and result_b.endpoint == f"127.0.0.1:{port_a}"
    assert result_a.rtt_ms is not None and result_a.rtt_ms < 100
    assert "peer unconfirmed" not in result_a.reason + result_b.reason
    # the punch really left from the WireGuard port: that socket saw the peer's packets too
    data, source = held_ports[0].recvfrom(2048)
    assert data.startswith(punch.MAGIC) and source == ("127.0.0.1", port_b)


def test_a_different_session_secret_never_confirms(held_ports: tuple[socket.socket, socket.socket]) -> None:
    port_a, port_b = (sock.getsockname()[1] for sock in held_ports)
    a = UdpHolePuncher(port_a, lan_addresses=["127.0.0.1"])
    b = UdpHolePuncher(port_b, lan_addresses=["127.0.0.1"])
    start = time.monotonic()
    result_a, result_b = punch_both(a, b, "secret-1", "secret-2", timeout_s=0.5)
    assert not result_a.succeeded and not result_b.succeeded
    assert "no punch ACK" in result_a.reason
    assert a.dropped > 0 and time.monotonic() - start < 2.0
    assert a.sent <= 0.5 / a.interval_s + 2  # bounded sending


def test_silent_peer_fails_within_the_timeout(held_ports: tuple[socket.socket, socket.socket]) -> None:
    port_a, port_b = (sock.getsockname()[1] for sock in held_ports)
    a = UdpHolePuncher(port_a, lan_addresses=["127.0.0.1"])
    result = a.punch("s", [f"127.0.0.1:{port_b}", "192.0.2.77:51820"], 0.3)
    assert not result.succeeded and 250 < result.elapsed_ms < 1500


def test_candidates_hold_mapping_forwarded_port_and_lan() -> None:
    nat = NatInfo(NAT_PORT_RESTRICTED, "203.0.113.101", 40001, "198.51.100.10", 51820, "203.0.113.2:3478")
    puncher = UdpHolePuncher(51820, nat=nat, forwarded_port=51820, lan_addresses=["198.51.100.10"])
    assert puncher.candidates() == ("203.0.113.101:40001", "203.0.113.101:51820", "198.51.100.10:51820")
    assert "127.0.0.1" not in " ".join(UdpHolePuncher(51820).candidates())


def test_bad_candidate_is_a_mesh_error() -> None:
    with pytest.raises(MeshError, match="bad candidate"):
        UdpHolePuncher(51820).punch("s", ["example.org:1"], 0.1)


def test_direct_is_tried_unless_both_are_symmetric() -> None:
    assert should_try_direct(NAT_SYMMETRIC, NAT_OPEN)
    assert should_try_direct(NAT_SYMMETRIC, NAT_PORT_RESTRICTED)
    assert should_try_direct(None, None)
    assert not should_try_direct(NAT_SYMMETRIC, NAT_SYMMETRIC)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_decode_never_raises_and_forgeries_fail(data: bytes) -> None:
    key = punch.session_key("k")
    assert punch.decode(key, data) is None or data == punch.encode(key, *punch.decode(key, data))  # type: ignore[misc]


def punch_with_keys(a: UdpHolePuncher, b: UdpHolePuncher, key_seen_by_a: str, key_seen_by_b: str,
                    timeout_s: float) -> tuple[PunchResult, PunchResult]:
    results: dict[str, PunchResult] = {}
    start_at = time.time() + 0.1
    session = "party:peer-a:peer-b:1"  # predictable, as the actors name it
    thread = threading.Thread(target=lambda: results.__setitem__("b", b.punch(
        session, a.candidates(), timeout_s, start_at=start_at, peer_public_key=key_seen_by_b)))
    thread.start()
    results["a"] = a.punch(session, b.candidates(), timeout_s, start_at=start_at,
                           peer_public_key=key_seen_by_a)
    thread.join()
    return results["a"], results["b"]


def test_sessions_bound_to_the_pair_of_wireguard_keys(
        held_ports: tuple[socket.socket, socket.socket]) -> None:
    from mesh.keys import PrivateKey

    key_a, key_b, stranger = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    port_a, port_b = (sock.getsockname()[1] for sock in held_ports)
    a = UdpHolePuncher(port_a, lan_addresses=["127.0.0.1"], private_key=key_a)
    b = UdpHolePuncher(port_b, lan_addresses=["127.0.0.1"], private_key=key_b)
    result_a, result_b = punch_with_keys(a, b, key_b.public_key, key_a.public_key, 2.0)
    assert result_a.succeeded and result_b.succeeded

    # Same predictable session name, but b holds a stranger's key: nothing confirms.
    impostor = UdpHolePuncher(port_b, lan_addresses=["127.0.0.1"], private_key=stranger)
    result_a, result_b = punch_with_keys(a, impostor, key_b.public_key, key_a.public_key, 0.5)
    assert not result_a.succeeded and not result_b.succeeded
    assert a.dropped > 0

    with pytest.raises(MeshError, match="peer's public key"):
        a.punch("s", [f"127.0.0.1:{port_b}"], 0.1)
