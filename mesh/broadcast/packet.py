"""Raw IPv4/UDP: parse what the capture socket sees, build what the re-emit socket sends,
and the classic BPF filter that keeps the capture socket from seeing anything else."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from mesh.checksum import internet_checksum

SO_ATTACH_FILTER = 26
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True)
class UdpDatagram:
    src: str
    src_port: int
    dst: str
    dst_port: int
    payload: bytes


def parse_ipv4_udp(data: bytes) -> UdpDatagram | None:
    """None for anything that is not a whole, well-formed IPv4 UDP datagram."""
    if len(data) < 28:
        return None
    ver_ihl, _tos, _total, _id, frag, _ttl, proto, _sum, src, dst = _IP.unpack_from(data)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < 20 or proto != socket.IPPROTO_UDP or frag & 0x3FFF:
        return None
    if len(data) < ihl + 8:
        return None
    sport, dport, length, _csum = _UDP.unpack_from(data, ihl)
    if length < 8 or ihl + length > len(data):
        return None
    return UdpDatagram(socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport,
                       bytes(data[ihl + 8:ihl + length]))



def build_ipv4_udp(src: str, src_port: int, dst: str, dst_port: int, payload: bytes, ttl: int) -> bytes:
    """An IP_HDRINCL packet: the kernel fills in the IP id and checksum; we do the UDP checksum."""
    length = 8 + len(payload)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    csum = internet_checksum(pseudo + _UDP.pack(src_port, dst_port, length, 0) + payload) or 0xFFFF
    ip = _IP.pack(0x45, 0, 20 + length, 0, 0x4000, ttl, socket.IPPROTO_UDP, 0, s, d)
    return ip + _UDP.pack(src_port, dst_port, length, csum) + payload


# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS, _LD_H_ABS, _LDX_B_MSH, _LD_H_IND = 0x20, 0x28, 0xB1, 0x48
_JEQ_K, _JSET_K, _RET_K = 0x15, 0x45, 0x06


def capture_filter(destinations: Sequence[str], ports: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Accept only unfragmented datagrams to one of `destinations` and one of `ports`.

    The raw capture socket otherwise sees every UDP packet the host receives (WireGuard's
    own encrypted traffic included); this keeps the per-packet Python cost to the few
    datagrams we actually forward.
    """
    if not destinations or not ports or len(destinations) > 100 or len(ports) > 100:
        raise ValueError("1 to 100 destinations and ports")
    dsts = [int(ipaddress.IPv4Address(d)) for d in destinations]
    n_d, n_p = len(dsts), len(ports)
    # Layout: 0 ldh frag; 1 jset; 2 ld dst; 3..3+n_d-1 jeq dst; ret0; ldx; ldh port; jeq port...; ret0; accept
    ports_at = 3 + n_d + 1
    drop_ports = ports_at + 2 + n_p
    accept = drop_ports + 1
    prog: list[tuple[int, int, int, int]] = [(_LD_H_ABS, 0, 0, 6)]
    prog.append((_JSET_K, 3 + n_d - 2, 0, 0x3FFF))  # fragment -> the ret 0 after the dst checks
    prog.append((_LD_W_ABS, 0, 0, 16))
    for i, d in enumerate(dsts):
        here = 3 + i
        prog.append((_JEQ_K, ports_at - here - 1, 0, d))
    prog.append((_RET_K, 0, 0, 0))
    prog.append((_LDX_B_MSH, 0, 0, 0))
    prog.append((_LD_H_IND, 0, 0, 2))
    for i, p in enumerate(ports):
        here = ports_at + 2 + i
        prog.append((_JEQ_K, accept - here - 1, 0, p))
    prog.append((_RET_K, 0, 0, 0))
    prog.append((_RET_K, 0, 0, 0x40000))
    assert len(prog) == accept + 1
    return prog


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    blob = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(blob)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
