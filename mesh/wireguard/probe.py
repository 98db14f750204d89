"""Round trips to a peer's virtual IP through the tunnel: ICMP echo from inside the process.

The ``mesh.interfaces.LatencyProber`` of real nodes. Each probe opens its own raw ICMP
socket bound to the WireGuard interface, sends one echo request with a random
identifier and waits for the matching reply; replies to other probes (every raw ICMP
socket sees every ICMP packet) are skipped by identifier and sequence. No process is
started per probe: a node with 16 peers probes about three times a second, and a
``ping`` process each time cost more CPU than the rest of the idle node.
Needs CAP_NET_RAW, which the agent keeps.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import select
import socket
import struct
import time

from mesh.checksum import internet_checksum
from mesh.interfaces import MeshError

ECHO_REQUEST, ECHO_REPLY = 8, 0
PAYLOAD = b"lanrage-probe\x00\x00\x00"  # 16 bytes: the reply must echo it
MAX_PACKET = 1500  # a reply larger than the link MTU is not ours
_sequence = itertools.count(1)


def echo_request(identifier: int, sequence: int) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, identifier, sequence)
    checksum = internet_checksum(header + PAYLOAD)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum, identifier, sequence) + PAYLOAD


def parse_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(source, identifier, sequence) of an IPv4 echo reply carrying our payload, else None."""
    if len(packet) < 20:
        return None
    header_length = (packet[0] & 0x0F) * 4
    if packet[0] >> 4 != 4 or header_length < 20 or len(packet) < header_length + 8 + len(PAYLOAD):
        return None
    kind, _code, _checksum, identifier, sequence = struct.unpack_from("!BBHHH", packet, header_length)
    if kind != ECHO_REPLY or packet[header_length + 8:header_length + 8 + len(PAYLOAD)] != PAYLOAD:
        return None
    return socket.inet_ntoa(packet[12:16]), identifier, sequence


class IcmpProber:
    def __init__(self, interface: str) -> None:
        self.interface = interface

    def probe(self, virtual_ip: str, timeout_s: float) -> float | None:
        ipaddress.IPv4Address(virtual_ip)
        identifier = int.from_bytes(os.urandom(2), "big")
        sequence = next(_sequence) & 0xFFFF
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except PermissionError:
            raise MeshError("probing needs CAP_NET_RAW") from None
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
                started = time.perf_counter()
                sock.sendto(echo_request(identifier, sequence), (virtual_ip, 0))
            except OSError as error:
                raise MeshError(f"probe of {virtual_ip} on {self.interface}: {error.strerror}") from None
            deadline = started + timeout_s
            while (remaining := deadline - time.perf_counter()) > 0:
                readable, _, _ = select.select([sock], [], [], remaining)
                if not readable:
                    break
                try:
                    packet = sock.recv(MAX_PACKET)
                except OSError:
                    break
                if parse_reply(packet) == (virtual_ip, identifier, sequence):
                    return (time.perf_counter() - started) * 1000
        return None
