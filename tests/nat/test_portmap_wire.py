"""PCP, NAT-PMP and SSDP replies decoded strictly (every byte hostile), and the mapper's
budget and fallback against fake gateways on loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.portmap import natpmp, pcp, upnp
from mesh.portmap.client import AUTO, NATPMP, PCP, PortMapper, default_gateway
from mesh.portmap.errors import PortMapError, PortMapRefused, PortMapUnanswered, PortMapWireError

NONCE = bytes(range(12))
PORT = 51820


def pcp_reply(*, version: int = 2, opcode: int = 0x81, result: int = 0, lifetime: int = 7200, epoch: int = 5,
              nonce: bytes = NONCE, protocol: int = 17, internal: int = PORT, external: int = 40000,
              address: str = "::ffff:203.0.113.7", options: bytes = b"") -> bytes:
    header = struct.pack("!BBBBII12s", version, opcode, 0, result, lifetime, epoch, b"\0" * 12)
    body = struct.pack("!12sB3sHH16s", nonce, protocol, b"\0\0\0", internal, external,
                       ipaddress.IPv6Address(address).packed)
    return header + body + options


def natpmp_map_reply(*, op: int = 129, result: int = 0, internal: int = PORT, external: int = 40000,
                     lifetime: int = 7200) -> bytes:
    return struct.pack("!BBHIHHI", 0, op, result, 9, internal, external, lifetime)


# ---------------------------------------------------------------- PCP


def test_pcp_map_reply_is_decoded() -> None:
    mapping = pcp.decode_map(pcp_reply(), NONCE, PORT)
    assert (mapping.external_ip, mapping.external_port, mapping.lifetime_s, mapping.epoch_s) == \
        ("203.0.113.7", 40000, 7200, 5)


def test_pcp_request_has_the_rfc_layout() -> None:
    request = pcp.map_request("198.51.100.2", NONCE, PORT, 0, 120)
    assert len(request) == 60 and request[:2] == b"\x02\x01"
    assert request[8:24] == ipaddress.IPv6Address("::ffff:198.51.100.2").packed
    assert request[24:36] == NONCE and request[36] == 17


@pytest.mark.parametrize(("reply", "error"), [
    (b"", PortMapWireError),
    (pcp_reply()[:23], PortMapWireError),
    (pcp_reply()[:59], PortMapWireError),
    (pcp_reply() + b"\0", PortMapWireError),  # not a multiple of 4
    (pcp_reply(options=b"\0" * 1100), PortMapWireError),  # past the 1100-byte bound
    (pcp_reply(version=3), PortMapWireError),
    (pcp_reply(opcode=0x01), PortMapWireError),  # a request, not a response
    (pcp_reply(opcode=0x82), PortMapWireError),  # a PEER response
    (pcp_reply(nonce=b"x" * 12), PortMapWireError),
    (pcp_reply(protocol=6), PortMapWireError),
    (pcp_reply(internal=PORT + 1), PortMapWireError),
    (pcp_reply(address="2001:db8::1"), PortMapWireError),
    (pcp_reply(address="::ffff:0.0.0.0"), PortMapWireError),
    (pcp_reply(address="::ffff:127.0.0.1"), PortMapWireError),
    (pcp_reply(external=0), PortMapWireError),
    (pcp_reply(options=b"\x01\x00\x00\x08"), PortMapWireError),  # an option longer than the reply
    (pcp_reply(options=b"\x01\x00"), PortMapWireError),  # an option header cut short
    (pcp_reply(result=2), PortMapRefused),
    (pcp_reply(result=200), PortMapRefused),
    (b"\x00\x81\x00\x01\x00\x00\x00\x00", PortMapRefused),  # NAT-PMP: unsupported version
    (b"\x00\x81\x00\x03", PortMapWireError),
])
def test_pcp_hostile_replies_are_refused(reply: bytes, error: type[PortMapError]) -> None:
    with pytest.raises(error):
        pcp.decode_map(reply, NONCE, PORT)


def test_pcp_unsupported_version_says_so() -> None:
    with pytest.raises(PortMapRefused) as caught:
        pcp.decode_map(b"\x00\x81\x00\x01\x00\x00\x00\x00", NONCE, PORT)
    assert caught.value.code == pcp.UNSUPP_VERSION


def test_pcp_options_are_skipped_within_bounds() -> None:
    option = b"\x0c\x00\x00\x05" + b"abcde" + b"\0\0\0"
    assert pcp.decode_map(pcp_reply(options=option), NONCE, PORT).external_port == 40000


# ---------------------------------------------------------------- NAT-PMP


def test_natpmp_replies_are_decoded() -> None:
    assert natpmp.decode_external_address(struct.pack("!BBHI4s", 0, 128, 0, 3, bytes([203, 0, 113, 9]))) \
        == ("203.0.113.9", 3)
    mapping = natpmp.decode_map(natpmp_map_reply(), PORT)
    assert (mapping.external_port, mapping.lifetime_s, mapping.epoch_s) == (40000, 7200, 9)


@pytest.mark.parametrize(("reply", "error"), [
    (b"", PortMapWireError),
    (b"\x00", PortMapWireError),
    (natpmp_map_reply()[:15], PortMapWireError),
    (natpmp_map_reply() + b"\0", PortMapWireError),
    (b"\x02" + natpmp_map_reply()[1:], PortMapWireError),  # a PCP version
    (natpmp_map_reply(op=130), PortMapWireError),  # a TCP mapping's reply
    (natpmp_map_reply(op=1), PortMapWireError),  # a request
    (natpmp_map_reply(internal=PORT - 1), PortMapWireError),
    (natpmp_map_reply(result=2), PortMapRefused),
    (natpmp_map_reply(result=77), PortMapRefused),
    (b"\0" * 2000, PortMapWireError),
])
def test_natpmp_hostile_map_replies_are_refused(reply: bytes, error: type[PortMapError]) -> None:
    with pytest.raises(error):
        natpmp.decode_map(reply, PORT)


@pytest.mark.parametrize("address", [bytes(4), bytes([127, 0, 0, 1]), bytes([224, 0, 0, 1])])
def test_natpmp_unusable_external_address_is_refused(address: bytes) -> None:
    with pytest.raises(PortMapWireError):
        natpmp.decode_external_address(struct.pack("!BBHI4s", 0, 128, 0, 3, address))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1300))
def test_any_bytes_either_decode_or_raise_a_port_map_error(data: bytes) -> None:
    for decode in (lambda: pcp.decode_map(data, NONCE, PORT), lambda: pcp.decode_announce(data),
                   lambda: natpmp.decode_map(data, PORT), lambda: natpmp.decode_external_address(data),
                   lambda: upnp.decode_search_reply(data, "198.51.100.1")):
        with suppress(PortMapError):
            decode()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 59), st.integers(0, 255))
def test_one_flipped_byte_of_a_pcp_reply_never_escapes_the_checks(index: int, value: int) -> None:
    reply = bytearray(pcp_reply())
    reply[index] = value
    try:
        mapping = pcp.decode_map(bytes(reply), NONCE, PORT)
    except PortMapError:
        return
    assert mapping.internal_port == PORT and mapping.external_port != 0
    assert not ipaddress.IPv4Address(mapping.external_ip).is_unspecified


# ---------------------------------------------------------------- SSDP


def ssdp(location: str, status: str = "HTTP/1.1 200 OK") -> bytes:
    return (f"{status}\r\nCACHE-CONTROL: max-age=120\r\nST: {upnp.SEARCH_TARGET}\r\n"
            f"LOCATION: {location}\r\n\r\n").encode()


def test_ssdp_reply_names_the_gateway_description() -> None:
    assert upnp.decode_search_reply(ssdp("http://198.51.100.1:40129/rootDesc.xml"), "198.51.100.1") == \
        "http://198.51.100.1:40129/rootDesc.xml"


@pytest.mark.parametrize("reply", [
    ssdp("http://203.0.113.66:80/rootDesc.xml"),  # somewhere else
    ssdp("http://gateway.example:80/rootDesc.xml"),  # a name (never resolved)
    ssdp("https://198.51.100.1:443/rootDesc.xml"),
    ssdp("http://198.51.100.1:99999/rootDesc.xml"),
    ssdp("http://198.51.100.1:80/" + "a" * 300),
    ssdp("http://198.51.100.1:80/x", status="HTTP/1.1 404 Not Found"),
    b"HTTP/1.1 200 OK\r\n\r\n",
    ssdp("http://198.51.100.1:80/") + b"\xff",
    ssdp("http://198.51.100.1:80/") + b" " * 2100,
])
def test_ssdp_hostile_replies_are_refused(reply: bytes) -> None:
    with pytest.raises(PortMapWireError):
        upnp.decode_search_reply(reply, "198.51.100.1")


# ---------------------------------------------------------------- the mapper against fake gateways


@contextmanager
def fake_gateway(answer: Callable[[bytes], bytes | None]) -> Iterator[int]:
    """A UDP server on loopback answering each datagram with ``answer(request)`` (None: silence)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            reply = answer(data)
            if reply is not None:
                sock.sendto(reply, source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def test_a_silent_gateway_costs_at_most_the_budget() -> None:
    with fake_gateway(lambda _: None) as port:
        mapper = PortMapper("127.0.0.1", PORT, AUTO, local_ip="127.0.0.1", budget_s=1.0, server_port=port)
        # SSDP goes to 127.0.0.1:1900, where nothing answers either.
        started = time.monotonic()
        with pytest.raises(PortMapError):
            mapper.obtain()
        assert time.monotonic() - started < 1.3


def test_auto_falls_back_from_pcp_to_natpmp_at_once() -> None:
    def natpmp_only(request: bytes) -> bytes | None:
        if request[0] == 2:
            return b"\x00\x81\x00\x01" + bytes(4)  # unsupported version
        if request == natpmp.external_address_request():
            return struct.pack("!BBHI4s", 0, 128, 0, 1, bytes([203, 0, 113, 9]))
        return natpmp_map_reply(external=41000, lifetime=60)

    with fake_gateway(natpmp_only) as port:
        mapper = PortMapper("127.0.0.1", PORT, AUTO, local_ip="127.0.0.1", lifetime_s=60, server_port=port)
        started = time.monotonic()
        mapping = mapper.obtain()
    assert time.monotonic() - started < 0.2
    assert (mapping.protocol, mapping.endpoint, mapping.lifetime_s) == (NATPMP, "203.0.113.9:41000", 60)


def test_pcp_mapping_ignores_hostile_datagrams_and_takes_the_real_reply() -> None:
    replies = iter([os.urandom(60), pcp_reply(nonce=b"y" * 12)])

    def answer(request: bytes) -> bytes | None:
        nonce = request[24:36]
        return next(replies, pcp_reply(nonce=nonce, external=45000, lifetime=30))

    with fake_gateway(answer) as port:
        mapper = PortMapper("127.0.0.1", PORT, PCP, local_ip="127.0.0.1", lifetime_s=30, server_port=port)
        mapping = mapper.obtain()
        assert (mapping.protocol, mapping.external_port) == (PCP, 45000)
        renewed = mapper.renew()
        assert renewed.external_port == 45000


def test_a_refusal_is_reported_with_its_reason() -> None:
    with fake_gateway(lambda request: pcp_reply(nonce=request[24:36], result=2)) as port:
        mapper = PortMapper("127.0.0.1", PORT, PCP, local_ip="127.0.0.1", server_port=port)
        with pytest.raises(PortMapError, match="not authorized"):
            mapper.obtain()


def test_default_gateway_is_read_from_the_route_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "lan0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\n")
    assert default_gateway(table) == "198.51.100.1"
    table.write_text("Iface\tDestination\n")
    assert default_gateway(table) is None


def test_unanswered_is_its_own_error() -> None:
    assert issubclass(PortMapUnanswered, PortMapError)
