"""Attacker and load tools for the relay lab tests, run inside lab namespaces.

    relay_tools.py sniff RELAY_IP PORT SECONDS      -> hex of the first binding session HELLO seen
    relay_tools.py replay RELAY_IP PORT HEX         -> "refused:<reason>" / "cookie" / "accepted" / "silent"
    relay_tools.py junk RELAY_IP PORT COUNT         -> "nothing" / "got data"
    relay_tools.py flood RELAY_IP PORT TICKETS PPS SECONDS -> packets sent (TICKETS: two JSON lines)

Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time

from mesh.relay import RelayTicket, wire
from mesh.relay.client import hello_exchange


def sniff(relay_ip: str, port: int, seconds: float) -> str:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    target = socket.inet_aton(relay_ip)
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        if len(frame) < 42 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or ip[16:20] != target:
            continue
        dport = struct.unpack_from("!H", ip, header + 2)[0]
        payload = ip[header + 8:]
        hello = wire.parse_hello(payload) if dport == port else None
        if hello is not None and hello.kind == wire.HELLO and hello.cookie != wire.NO_COOKIE:
            return payload.hex()  # a HELLO that binds: it echoes the cookie for its sender's address
    return ""


def replay(relay_ip: str, port: int, hello_hex: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.sendto(bytes.fromhex(hello_hex), (relay_ip, port))
        try:
            answer = sock.recv(2048)
        except TimeoutError:
            return "silent"
        refused = wire.parse_refused(answer)
        if refused is not None:
            return f"refused:{wire.REFUSAL_NAMES[refused[1]]}"
        if wire.parse_cookie(answer) is not None:
            return "cookie"
        return "accepted" if wire.parse_hello_ok(answer) else "other"


def junk(relay_ip: str, port: int, count: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index in range(count):
            sock.sendto(b"\x04\0\0\0" + index.to_bytes(12, "big") + b"x" * 80, (relay_ip, port))
        sock.settimeout(0.5)
        try:
            sock.recv(2048)
            return "got data"
        except TimeoutError:
            return "nothing"


def _bind(sock: socket.socket, ticket: RelayTicket) -> bool:
    sock.settimeout(1.0)
    return wire.parse_hello_ok(hello_exchange(sock, ticket, sock.getpeername())) is not None


def flood(relay_ip: str, port: int, tickets_json: str, pps: int, seconds: float) -> str:
    """Binds both sides of a session (two sockets), then floods from side A at ``pps``."""
    first, second = (RelayTicket.from_json(text) for text in tickets_json.split("\n"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sock.connect((relay_ip, port))
        sink.connect((relay_ip, port))
        if not (_bind(sock, first) and _bind(sink, second)):
            return "refused"
        packet = b"\x04\0\0\0" + b"f" * 92
        sent = 0
        start = time.monotonic()
        burst = max(1, pps // 100)
        while (now := time.monotonic()) < start + seconds:  # paced in 10 ms bursts
            due = int((now - start) * pps)
            while sent < due:
                for _ in range(min(burst, due - sent)):
                    with contextlib.suppress(OSError):
                        sock.send(packet)
                    sent += 1
            time.sleep(0.002)
        return str(sent)


def main(argv: list[str]) -> int:
    kind, relay_ip, port = argv[0], argv[1], int(argv[2])
    if kind == "sniff":
        print(sniff(relay_ip, port, float(argv[3])))
    elif kind == "replay":
        print(replay(relay_ip, port, argv[3]))
    elif kind == "junk":
        print(junk(relay_ip, port, int(argv[3])))
    elif kind == "flood":
        print(flood(relay_ip, port, argv[3], int(argv[4]), float(argv[5])))
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
