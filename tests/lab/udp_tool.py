"""Tiny bounded UDP helpers run inside lab hosts by the lab tests.

``reflect PORT SECONDS``: answer every datagram with the sender's "ip:port".
``listen PORT SECONDS``: print the first datagram's sender and exit 0; exit 1 on timeout.
``probe SECONDS LOCAL_PORT HOST:PORT...``: from one socket, ask each reflector for our
mapping and print one "ip:port" line per answer.
``send HOST:PORT COUNT``: send COUNT datagrams.
"""

from __future__ import annotations

import socket
import sys
import time


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> int:
    command, *args = argv
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if command in ("reflect", "listen"):
        sock.bind(("0.0.0.0", int(args[0])))
        deadline = time.monotonic() + float(args[1])
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                _, sender = sock.recvfrom(2048)
            except TimeoutError:
                break
            if command == "listen":
                print(f"{sender[0]}:{sender[1]}", flush=True)
                return 0
            sock.sendto(f"{sender[0]}:{sender[1]}".encode(), sender)
        return 0 if command == "reflect" else 1
    if command == "probe":
        sock.bind(("0.0.0.0", int(args[1])))
        sock.settimeout(float(args[0]))
        for target in args[2:]:
            for _ in range(5):
                sock.sendto(b"?", _addr(target))
                try:
                    data, _ = sock.recvfrom(2048)
                except TimeoutError:
                    continue
                print(data.decode(), flush=True)
                break
        return 0
    if command == "send":
        for _ in range(int(args[1])):
            sock.sendto(b"hello", _addr(args[0]))
            time.sleep(0.05)
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
