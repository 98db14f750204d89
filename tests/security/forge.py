"""Datagrams with a forged source address, as an attacker on the internet sends them.

A raw IPv4 socket (root, or CAP_NET_RAW) writes the whole IP header, so the source
address is whatever the attacker chooses. On loopback every 127.0.0.0/8 address is
local: a victim bound to 127.0.0.2 receives what the relay sends to that address.
"""

from __future__ import annotations

import socket
import struct

from mesh.checksum import internet_checksum as _checksum


def udp_from(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> None:
    """Send one UDP datagram to ``destination`` that claims to come from ``source``."""
    udp_len = 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(source[0]), socket.inet_aton(destination[0]))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    pseudo = socket.inet_aton(source[0]) + socket.inet_aton(destination[0]) + struct.pack(
        "!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", source[1], destination[1], udp_len, 0) + payload
    checksum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", checksum) + udp[8:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        sock.sendto(header + udp, (destination[0], 0))
