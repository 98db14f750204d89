"""A stand-in for an old LAN game's discovery, run inside a lab host.

    game.py listen PORT SECONDS [--reply]    bound to 0.0.0.0:PORT (no SO_REUSEADDR), prints
                                             one JSON line per datagram; --reply answers each
                                             one to its source with b"REPLY " + payload
    game.py send DST PORT COUNT TAG SECONDS [--sport N]
                                             bound to 0.0.0.0:PORT (or N), sends COUNT broadcasts
                                             "TAG i" 50 ms apart, then listens SECONDS for
                                             replies; prints one JSON line per datagram heard
    game.py join GROUP PORT SECONDS          like listen, after joining a multicast group
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time


def _listen(sock: socket.socket, seconds: float, reply: bool) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, (src, sport) = sock.recvfrom(65535)
        except TimeoutError:
            break
        print(json.dumps({"src": src, "sport": sport, "data": data.decode(errors="replace")}), flush=True)
        if reply and not data.startswith(b"REPLY"):
            sock.sendto(b"REPLY " + data, (src, sport))


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the test ends the window; output is flushed
    mode = argv[0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if mode == "listen":
        sock.bind(("0.0.0.0", int(argv[1])))
        _listen(sock, float(argv[2]), "--reply" in argv)
    elif mode == "join":
        sock.bind(("0.0.0.0", int(argv[2])))
        mreq = socket.inet_aton(argv[1]) + socket.inet_aton("0.0.0.0")
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        _listen(sock, float(argv[3]), "--reply" in argv)
    elif mode == "send":
        dst, port, count, tag, seconds = argv[1], int(argv[2]), int(argv[3]), argv[4], float(argv[5])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sport = int(argv[argv.index("--sport") + 1]) if "--sport" in argv else port
        sock.bind(("0.0.0.0", sport))
        for i in range(min(count, 1000)):
            sock.sendto(f"{tag} {i}".encode(), (dst, port))
            time.sleep(0.05)
        _listen(sock, min(seconds, 30.0), False)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
