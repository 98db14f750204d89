"""Speak UDP *as* a port that another process (wireguard-go) has bound: the port-sharing trick.

The NAT mapping that matters is the one of WireGuard's own listen port: a punch or a
STUN binding from any other port opens a different mapping (and on a symmetric NAT a
different one per destination). wireguard-go binds its port without SO_REUSEPORT, and
even with it Linux would hash the punch replies to either socket. So we do not bind
the port at all:

- send: a raw ``IPPROTO_UDP`` socket, we write the UDP header with WireGuard's port as
  the source port; the kernel adds the IP header, conntrack and the NAT router see the
  very same 5-tuple as WireGuard's traffic, hence the very same mapping;
- receive: the same raw socket gets a copy of every inbound UDP datagram of the
  namespace (raw delivery happens before the UDP socket lookup); we keep those for
  our port that carry our magic. wireguard-go gets the original, sees an unknown
  message type and drops it silently.

Needs CAP_NET_RAW (the node agent already runs as root to create WireGuard interfaces).
"""

from __future__ import annotations

import ctypes
import errno
import select
import socket
import struct
import time
from typing import Protocol

from mesh.checksum import internet_checksum

Address = tuple[str, int]

_SO_ATTACH_FILTER = 26


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _port_filter(port: int) -> tuple[bytes, object]:
    """A classic BPF program: accept IPv4/UDP datagrams whose destination port is ``port``."""
    program = [
        (0x30, 0, 0, 0x00000009),  # ldb [9]            protocol
        (0x15, 0, 5, 0x00000011),  # jeq #17 (UDP)
        (0x28, 0, 0, 0x00000006),  # ldh [6]            flags + fragment offset
        (0x45, 3, 0, 0x00001FFF),  # jset #0x1fff -> drop (fragments)
        (0xB1, 0, 0, 0x00000000),  # ldxb 4*([0]&0xf)   IP header length
        (0x48, 0, 0, 0x00000002),  # ldh [x+2]          destination port
        (0x15, 0, 1, port),        # jeq #port
        (0x06, 0, 0, 0x00040000),  # ret #262144        accept
        (0x06, 0, 0, 0x00000000),  # ret #0             drop
    ]
    array = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    fprog = _SockFprog(len(program), array)
    return bytes(ctypes.string_at(ctypes.addressof(fprog), ctypes.sizeof(fprog))), (array, fprog)



def _source_ip_for(destination: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((destination, 9))  # no packet is sent: this only asks the routing table
        return probe.getsockname()[0]


class RawUdpPort:
    """Send from and receive for local UDP ``port`` without binding it."""

    def __init__(self, port: int) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"bad UDP port {port}")
        self.port = port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        program, self._keepalive = _port_filter(port)
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
        self._sources: dict[str, str] = {}
        self._timeout: float | None = None

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def sendto(self, data: bytes, addr: Address) -> int:
        host, port = addr[0], int(addr[1])
        host = socket.gethostbyname(host)
        source = self._sources.get(host) or self._sources.setdefault(host, _source_ip_for(host))
        length = 8 + len(data)
        pseudo = socket.inet_aton(source) + socket.inet_aton(host) + struct.pack("!BBH", 0, 17, length)
        header = struct.pack("!HHHH", self.port, port, length, 0)
        checksum = internet_checksum(pseudo + header + data) or 0xFFFF
        self._sock.sendto(struct.pack("!HHHH", self.port, port, length, checksum) + data, (host, 0))
        return len(data)

    def recvfrom(self, bufsize: int = 65535) -> tuple[bytes, Address]:
        """The next datagram for our port, honouring ``settimeout`` (raises TimeoutError)."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._sock], [], [], remaining)
            if not readable:
                raise TimeoutError("timed out")
            packet = self._sock.recv(65535)
            parsed = parse_ip_udp(packet, self.port)
            if parsed is not None:
                return parsed[0][:bufsize], parsed[1]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawUdpPort:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def parse_ip_udp(packet: bytes, port: int) -> tuple[bytes, Address] | None:
    """(payload, source) of an IPv4/UDP packet to ``port``, None otherwise. Never raises."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return None
    header = (packet[0] & 0x0F) * 4
    if header < 20 or len(packet) < header + 8:
        return None
    source_port, dest_port, length = struct.unpack_from("!HHH", packet, header)
    if dest_port != port or length < 8 or header + length > len(packet):
        return None
    return packet[header + 8:header + length], (socket.inet_ntoa(packet[12:16]), source_port)


class UdpPort(Protocol):
    def settimeout(self, timeout: float | None) -> None: ...

    def sendto(self, data: bytes, addr: Address) -> int: ...

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


def open_port(port: int) -> UdpPort:
    """A socket bound to ``port``; if wireguard-go already holds it, a ``RawUdpPort`` sharing it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("0.0.0.0", port))
        return sock
    except OSError as error:
        sock.close()
        if error.errno != errno.EADDRINUSE or port == 0:
            raise
    return RawUdpPort(port)
