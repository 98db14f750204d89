"""Attacks on the hole puncher with captured, authentic messages, against a real UdpHolePuncher.

The attacker sits on the path: it cannot forge a MAC, but it can copy the peer's PUNCH
and ACK messages and send them again from addresses it chooses.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from mesh.interfaces import PunchResult
from mesh.nat import punch
from mesh.nat.punch import UdpHolePuncher

SESSION = "party:alice:bob:1"
KEY = punch.session_key(SESSION)
PEER_ID = b"peer-id!"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    return sock


def address(sock: socket.socket) -> str:
    return "{}:{}".format(*sock.getsockname())


def received(sock: socket.socket, quiet_s: float = 0.3) -> list[bytes]:
    got: list[bytes] = []
    sock.settimeout(quiet_s)
    try:
        while True:
            got.append(sock.recv(2048))
    except TimeoutError:
        return got


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


Running = tuple[threading.Thread, dict[str, PunchResult]]


def start_punch(puncher: UdpHolePuncher, candidates: list[str], timeout_s: float) -> Running:
    result: dict[str, PunchResult] = {}
    thread = threading.Thread(target=lambda: result.__setitem__(
        "r", puncher.punch(SESSION, candidates, timeout_s)), daemon=True)
    thread.start()
    time.sleep(0.1)
    return thread, result


def test_a_replayed_punch_gets_no_answer_and_adds_no_target(sockets: ExitStack) -> None:
    peer = sockets.enter_context(udp_socket())
    port = free_port()
    puncher = UdpHolePuncher(port, lan_addresses=["127.0.0.1"], linger_s=5.0)
    thread, _ = start_punch(puncher, [address(peer)], timeout_s=1.5)
    captured = punch.encode(KEY, punch.PUNCH, 0, PEER_ID, 1, 0)
    peer.sendto(captured, ("127.0.0.1", port))
    attackers = [sockets.enter_context(udp_socket()) for _ in range(20)]
    for attacker in attackers:
        attacker.sendto(captured, ("127.0.0.1", port))
    thread.join()
    # Before: each copy got an ACK and then a PUNCH every 25 ms for the rest of the timeout.
    assert [len(received(a, 0.05)) for a in attackers] == [0] * 20
    assert puncher.replays == 20


def test_fresh_punches_from_many_addresses_teach_only_a_few_targets(sockets: ExitStack) -> None:
    peer = sockets.enter_context(udp_socket())
    port = free_port()
    puncher = UdpHolePuncher(port, lan_addresses=["127.0.0.1"], linger_s=5.0)
    thread, _ = start_punch(puncher, [address(peer)], timeout_s=1.0)
    strangers = [sockets.enter_context(udp_socket()) for _ in range(12)]
    for seq, stranger in enumerate(strangers, start=1):
        stranger.sendto(punch.encode(KEY, punch.PUNCH, 0, PEER_ID, seq, 0), ("127.0.0.1", port))
    thread.join()
    answered = [bool(received(s, 0.05)) for s in strangers]
    assert sum(answered) == punch.MAX_LEARNED_TARGETS


def test_an_ack_counts_only_from_the_address_its_punch_went_to(sockets: ExitStack) -> None:
    peer, attacker = sockets.enter_context(udp_socket()), sockets.enter_context(udp_socket())
    port = free_port()
    puncher = UdpHolePuncher(port, lan_addresses=["127.0.0.1"])
    thread, result = start_punch(puncher, [address(peer)], timeout_s=1.5)
    data = peer.recv(2048)
    message = punch.decode(KEY, data)
    assert message is not None and message[0] == punch.PUNCH
    their_seq = message[3]
    ack = punch.encode(KEY, punch.ACK, 0, PEER_ID, 0, their_seq)
    attacker.sendto(ack, ("127.0.0.1", port))  # the peer's ACK, copied and sent first from elsewhere
    time.sleep(0.2)
    assert "r" not in result  # not confirmed by the copy
    peer.sendto(ack, ("127.0.0.1", port))
    thread.join()
    assert result["r"].succeeded and result["r"].endpoint == address(peer)
    assert puncher.dropped >= 1


def test_a_replayed_punch_from_a_chosen_address_draws_only_a_few_datagrams(sockets: ExitStack) -> None:
    """Finding 9: one PUNCH captured and replayed from an address the attacker chose (before the
    peer's own arrives) teaches that address; it then gets a few PUNCHes, not one an interval."""
    peer, chosen = sockets.enter_context(udp_socket()), sockets.enter_context(udp_socket())
    port = free_port()
    puncher = UdpHolePuncher(port, lan_addresses=["127.0.0.1"])
    thread, _ = start_punch(puncher, [address(peer)], timeout_s=2.0)
    chosen.sendto(punch.encode(KEY, punch.PUNCH, 0, PEER_ID, 1, 0), ("127.0.0.1", port))
    thread.join()
    got = received(chosen, 0.1)
    kinds = [punch.decode(KEY, data)[0] for data in got]  # type: ignore[index]
    assert kinds.count(punch.ACK) == 1
    assert kinds.count(punch.PUNCH) == punch.LEARNED_PUNCHES
    assert len(received(peer, 0.1)) > 2 * punch.LEARNED_PUNCHES  # the real candidate kept getting them
