"""The in-process ICMP prober's wire format (its lab use is in the e2e tests)."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from mesh.checksum import internet_checksum
from mesh.wireguard.probe import ECHO_REPLY, PAYLOAD, echo_request, parse_reply


def reply(source: str, identifier: int, sequence: int, payload: bytes = PAYLOAD) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 1, 0,
                     socket.inet_aton(source), socket.inet_aton("10.66.0.1"))
    return ip + struct.pack("!BBHHH", ECHO_REPLY, 0, 0, identifier, sequence) + payload


def test_the_request_checksums_to_zero_and_a_matching_reply_parses() -> None:
    request = echo_request(0x1234, 7)
    assert internet_checksum(request) == 0
    assert parse_reply(reply("10.66.0.2", 0x1234, 7)) == ("10.66.0.2", 0x1234, 7)


def test_requests_other_payloads_and_truncated_packets_are_not_replies() -> None:
    assert parse_reply(reply("10.66.0.2", 1, 1, b"someone else's ping")) is None
    assert parse_reply(reply("10.66.0.2", 1, 1)[:30]) is None
    as_request = bytearray(reply("10.66.0.2", 1, 1))
    as_request[20] = 8
    assert parse_reply(bytes(as_request)) is None


@given(st.binary(max_size=200))
def test_any_bytes_parse_to_a_reply_or_none(data: bytes) -> None:
    parsed = parse_reply(data)
    assert parsed is None or len(parsed) == 3
