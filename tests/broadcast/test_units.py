"""The wrapper codec, raw packets, the BPF program and the emulator's decisions, without a network."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.broadcast import BroadcastConfig, BroadcastEmulator, WireError, Wrapped, decode, packet
from mesh.broadcast.emulator import IP_PKTINFO, _Limiter, directed_broadcasts
from mesh.broadcast.wire import HEADER_SIZE
from mesh.checksum import internet_checksum

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ports = st.integers(1, 65535)
wrapped = st.builds(Wrapped, ipv4, ports, ipv4, ports, st.integers(0, 2**64 - 1), st.binary(max_size=1400))


@given(wrapped)
def test_wrapper_round_trips(msg: Wrapped) -> None:
    assert decode(msg.encode(), 1400) == msg


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_wire_error(data: bytes) -> None:
    try:
        msg = decode(data, 1400)
    except WireError:
        return
    assert msg.encode() == data


@settings(max_examples=500)
@given(wrapped, st.integers(0, HEADER_SIZE - 1), st.integers(1, 255))
def test_a_damaged_header_is_rejected_or_still_exact(msg: Wrapped, at: int, flip: int) -> None:
    data = bytearray(msg.encode())
    data[at] ^= flip
    try:
        again = decode(bytes(data), 1400)
    except WireError:
        # Only the constant fields (magic, version, hops, flags) or a port made zero reject.
        assert at < 8 or data[12:14] == b"\0\0" or data[18:20] == b"\0\0"
        return
    assert again.encode() == bytes(data)  # fields that carry values (addresses, ports, id) change


def test_wrapper_limits() -> None:
    good = Wrapped("10.66.0.1", 4445, "255.255.255.255", 4445, 7, b"x" * 10).encode()
    assert decode(good, 10).payload == b"x" * 10
    with pytest.raises(WireError, match="too large"):
        decode(good, 9)
    for at, value, reason in ((0, ord("X"), "magic"), (4, 2, "version"), (5, 2, "hops"), (6, 1, "hops")):
        bad = bytearray(good)
        bad[at] = value
        with pytest.raises(WireError, match=reason):
            decode(bytes(bad), 10)
    with pytest.raises(WireError, match="short"):
        decode(good[:HEADER_SIZE - 1], 10)


@given(ipv4, ports, ipv4, ports, st.binary(max_size=1400), st.integers(0, 255))
def test_raw_packets_round_trip_with_a_valid_udp_checksum(src: str, sport: int, dst: str, dport: int,
                                                          payload: bytes, ttl: int) -> None:
    raw = packet.build_ipv4_udp(src, sport, dst, dport, payload, ttl)
    assert packet.parse_ipv4_udp(raw) == packet.UdpDatagram(src, sport, dst, dport, payload)
    assert raw[8] == ttl
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, 8 + len(payload))
    assert internet_checksum(pseudo + raw[20:]) == 0


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_parse_never_raises(data: bytes) -> None:
    packet.parse_ipv4_udp(data)


def _run_bpf(prog: list[tuple[int, int, int, int]], data: bytes) -> int:
    """A tiny classic-BPF interpreter for the opcodes capture_filter uses."""
    a = x = pc = 0
    for _ in range(len(prog) + 1):
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x28:
            a = struct.unpack_from("!H", data, k)[0]
        elif code == 0x20:
            a = struct.unpack_from("!I", data, k)[0]
        elif code == 0xB1:
            x = (data[k] & 0x0F) * 4
        elif code == 0x48:
            a = struct.unpack_from("!H", data, x + k)[0]
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")
    raise AssertionError("ran off the program")


@settings(max_examples=300)
@given(st.lists(ipv4, min_size=1, max_size=5, unique=True),
       st.lists(ports, min_size=1, max_size=8, unique=True), ipv4, ports, st.booleans())
def test_the_capture_filter_accepts_exactly_the_configured_destinations_and_ports(
        dsts: list[str], wanted: list[int], dst: str, dport: int, fragment: bool) -> None:
    prog = packet.capture_filter(dsts, wanted)
    raw = bytearray(packet.build_ipv4_udp("192.0.2.1", 1234, dst, dport, b"hello", 1))
    if fragment:
        raw[6:8] = struct.pack("!H", 0x2000 | 3)  # a later fragment: no UDP header there
    accepted = _run_bpf(prog, bytes(raw)) > 0
    assert accepted == (dst in dsts and dport in wanted and not fragment)


def test_config_is_validated() -> None:
    ok = {"interface": "wg0", "virtual_ip": "10.66.0.1", "ports": (4445,)}
    assert BroadcastConfig(**ok).destinations == ("255.255.255.255", "10.66.255.255")
    for bad in ({"ports": ()}, {"ports": (0,)}, {"ports": (8668,)}, {"groups": ("10.0.0.1",)},
                {"virtual_ip": "10.67.0.1"}, {"max_payload": 0}):
        with pytest.raises(ValueError):
            BroadcastConfig(**{**ok, **bad})


def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = _Limiter(rate=10, burst=5, max_keys=2)
    assert [limiter.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("a", 0.1) and not limiter.allow("a", 0.1)
    limiter.allow("b", 0.1)
    limiter.allow("c", 0.1)
    assert list(limiter.buckets) == ["b", "c"]  # bounded


class _FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.sources: list[str] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sent.append((data, address))
        return len(data)

    def close(self) -> None:
        pass

    def sendmsg(self, buffers: list[bytes], ancillary: list[tuple[int, int, bytes]], _flags: int,
                address: tuple[str, int]) -> int:
        [(level, kind, pktinfo)] = ancillary
        assert (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO)
        self.sources.append(socket.inet_ntoa(pktinfo[4:8]))
        return self.sendto(b"".join(buffers), address)


def _local(sport: int, payload: bytes, src: str = "127.0.0.1") -> bytes:
    return packet.build_ipv4_udp(src, sport, "255.255.255.255", 4445, payload, 64)


def _emulator(**overrides: object) -> tuple[BroadcastEmulator, _FakeSocket, _FakeSocket]:
    now = [0.0]
    config = BroadcastConfig(**{"interface": "wg0", "virtual_ip": "10.66.0.1", "ports": (4445,),
                                "groups": ("239.255.255.250",), "burst": 3, "rate_per_s": 1.0, **overrides})
    emulator = BroadcastEmulator(config, clock=lambda: now[0])
    tunnel, emit = _FakeSocket(), _FakeSocket()
    emulator._tunnel = tunnel  # type: ignore[assignment]
    emulator._emit = emit  # type: ignore[assignment]
    emulator.set_peers(["10.66.0.2", "10.66.0.3", "10.66.0.1"])
    return emulator, tunnel, emit


def test_peers_never_include_the_node_itself() -> None:
    emulator, _, _ = _emulator()
    assert emulator.peers == {"10.66.0.2", "10.66.0.3"}
    with pytest.raises(ValueError):
        emulator.set_peers(["not an ip"])


def test_a_local_broadcast_is_wrapped_to_every_peer_and_a_foreign_one_is_not() -> None:
    emulator, tunnel, _ = _emulator()
    emulator._on_capture(_local(5000, b"hi"), None)
    assert [addr for _, addr in tunnel.sent] == [("10.66.0.2", 8668), ("10.66.0.3", 8668)]
    msg = decode(tunnel.sent[0][0], 1400)
    assert (msg.origin, msg.src_port, msg.dst, msg.dst_port, msg.payload) == (
        "10.66.0.1", 5000, "255.255.255.255", 4445, b"hi")
    assert decode(tunnel.sent[1][0], 1400).msg_id == msg.msg_id
    assert tunnel.sources == ["10.66.0.1", "10.66.0.1"]
    # 198.51.100.77 is no address of this host (a LAN neighbour); 10.66.0.2 is a peer (our re-emit).
    for src in ("198.51.100.77", "10.66.0.2"):
        emulator._on_capture(_local(5000, b"hi", src), None)
    emulator._on_capture(_local(5000, b"x" * 1401), None)
    emulator.set_peers([])
    emulator._on_capture(_local(5001, b"hi"), None)
    counters = emulator.counters()
    assert (counters["captured"], counters["forwarded"]) == (3, 2)
    dropped = counters["dropped_not_local"], counters["dropped_too_large"], counters["dropped_no_peers"]
    assert dropped == (2, 1, 1)
    assert len(tunnel.sent) == 2


def test_a_node_in_two_parties_sends_each_peer_from_the_address_that_peer_knows() -> None:
    emulator, tunnel, _ = _emulator()
    emulator.set_peers({"10.66.0.2": "10.66.0.1", "10.66.0.5": "10.66.0.4", "10.66.0.4": "10.66.0.1"})
    assert emulator.peers == {"10.66.0.2", "10.66.0.5"}  # 10.66.0.4 is one of our own addresses
    emulator._on_capture(_local(5000, b"hi"), None)
    assert [addr[0] for _, addr in tunnel.sent] == ["10.66.0.2", "10.66.0.5"]
    assert tunnel.sources == ["10.66.0.1", "10.66.0.4"]
    assert [decode(data, 1400).origin for data, _ in tunnel.sent] == ["10.66.0.1", "10.66.0.4"]
    with pytest.raises(ValueError):
        emulator.set_peers({"10.66.0.2": "192.0.2.1"})


def test_a_broadcast_to_another_interfaces_subnet_goes_out_as_a_limited_broadcast() -> None:
    emulator, tunnel, _ = _emulator()
    emulator._directed = frozenset({"198.51.100.15"})
    emulator._on_capture(packet.build_ipv4_udp("127.0.0.1", 5000, "198.51.100.15", 4445, b"lan", 64), None)
    emulator._on_capture(packet.build_ipv4_udp("127.0.0.1", 5000, "198.51.100.23", 4445, b"other", 64), None)
    assert [decode(data, 1400).dst for data, _ in tunnel.sent] == ["255.255.255.255"] * 2
    assert emulator.counters()["captured"] == 1


def test_directed_broadcasts_are_subnet_broadcasts() -> None:
    for address in directed_broadcasts():
        assert ipaddress.IPv4Address(address).packed[-1] & 1  # all host bits set: odd


def test_capture_is_rate_limited_per_source() -> None:
    emulator, tunnel, _ = _emulator()
    for _ in range(5):
        emulator._on_capture(_local(5000, b"q"), None)
    assert emulator.counters()["dropped_rate_limited"] == 2 and len(tunnel.sent) == 6


def test_received_datagrams_are_checked_deduplicated_and_re_emitted_from_the_origin() -> None:
    emulator, _, emit = _emulator()

    def wrap(origin: str = "10.66.0.2", dst: str = "255.255.255.255", port: int = 4445,
             msg_id: int = 1) -> bytes:
        return Wrapped(origin, 6000, dst, port, msg_id, b"game").encode()

    emulator._on_tunnel(wrap(), ("10.66.0.2", 8668))
    emulator._on_tunnel(wrap(), ("10.66.0.2", 8668))  # the same message again
    emulator._on_tunnel(wrap(msg_id=2), ("10.66.0.9", 8668))  # not a peer
    emulator._on_tunnel(wrap(origin="10.66.0.3", msg_id=3), ("10.66.0.2", 8668))  # claims another origin
    emulator._on_tunnel(wrap(port=22, msg_id=4), ("10.66.0.2", 8668))  # not a game port
    emulator._on_tunnel(wrap(dst="10.66.0.1", msg_id=5), ("10.66.0.2", 8668))  # unicast: not ours to emit
    emulator._on_tunnel(b"LRbc\x01garbage", ("10.66.0.2", 8668))
    ssdp = Wrapped("10.66.0.3", 1900, "239.255.255.250", 4445, 6, b"ssdp").encode()
    emulator._on_tunnel(ssdp, ("10.66.0.3", 8668))
    counters = emulator.counters()
    assert (counters["received"], counters["reemitted"]) == (3, 2)
    assert (counters["dropped_duplicate"], counters["dropped_not_peer"], counters["dropped_spoofed"],
            counters["dropped_not_allowed"], counters["dropped_malformed"]) == (1, 1, 1, 2, 1)
    (first, to1), (second, to2) = emit.sent
    udp = packet.UdpDatagram
    assert packet.parse_ipv4_udp(first) == udp("10.66.0.2", 6000, "255.255.255.255", 4445, b"game")
    assert first[8] == 1 and to1 == ("255.255.255.255", 0)
    assert packet.parse_ipv4_udp(second) == udp("10.66.0.3", 1900, "239.255.255.250", 4445, b"ssdp")
    assert second[8] == 0 and to2 == ("239.255.255.250", 0)  # multicast: TTL 0, never leaves the host


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_fuzzed_tunnel_input_is_counted_once_and_never_raises(data: bytes) -> None:
    emulator, _, _ = _emulator()
    emulator._on_tunnel(data, ("10.66.0.2", 8668))
    counters = emulator.counters()
    assert counters["dropped_malformed"] + counters["received"] + counters["dropped_spoofed"] + \
        counters["dropped_not_allowed"] == 1


def test_the_loop_survives_a_failing_handler_and_stops_at_once() -> None:
    emulator, _, _ = _emulator()
    capture, capture_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tunnel, tunnel_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    thread = threading.Thread(target=emulator._run, args=(capture, tunnel))
    emulator._thread = thread  # as start() does: stop() joins the loop before closing its wake socket
    thread.start()
    try:
        capture_peer.send(b"not an IP packet")  # ignored
        tunnel_peer.send(b"x")  # a Unix socket gives no (ip, port): the handler raises
        tunnel_peer.send(b"y")
        deadline = time.monotonic() + 5
        while emulator.counters()["dropped_internal_error"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.counters()["dropped_internal_error"] == 2 and thread.is_alive()
        started = time.monotonic()
        emulator.stop()
        thread.join(2)
        assert not thread.is_alive() and time.monotonic() - started < 1
    finally:
        for sock in (capture, capture_peer, tunnel, tunnel_peer):
            sock.close()


def test_group_ports_are_carried_only_on_their_own_port() -> None:
    config = BroadcastConfig(interface="lr0", virtual_ip="10.66.0.1", ports=(27015,),
                             group_ports=(("239.255.255.250", 1900), ("224.0.0.251", 5353)))
    assert config.capture_ports == (1900, 5353, 27015)
    assert config.carries("239.255.255.250", 1900) and config.carries("224.0.0.251", 5353)
    assert config.carries("255.255.255.255", 27015) and config.carries("10.66.255.255", 27015)
    assert not config.carries("239.255.255.250", 5353)  # another group's port
    assert not config.carries("239.255.255.250", 27015)  # a broadcast port is not a group port
    assert not config.carries("255.255.255.255", 1900)  # a group port is not a broadcast port
    only_groups = BroadcastConfig(interface="lr0", virtual_ip="10.66.0.1", ports=(),
                                  group_ports=(("224.0.2.60", 4445),))
    assert only_groups.all_groups == ("224.0.2.60",)
    with pytest.raises(ValueError, match="1 to 64"):
        BroadcastConfig(interface="lr0", virtual_ip="10.66.0.1", ports=())
    with pytest.raises(ValueError, match="not a multicast group"):
        BroadcastConfig(interface="lr0", virtual_ip="10.66.0.1", ports=(), group_ports=(("192.0.2.1", 9),))
