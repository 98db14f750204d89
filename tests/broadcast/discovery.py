"""SSDP and mDNS by plain sockets, as a console or a media app would do it, run inside a lab host.

    discovery.py respond ssdp|mdns NAME SECONDS ADDRESS
                                                  bound to 0.0.0.0:1900 or :5353, joined to the
                                                  group; answers each M-SEARCH / A query for
                                                  NAME.local (with ADDRESS) by unicast to its
                                                  source; prints one JSON line a query
    discovery.py query ssdp|mdns NAME SECONDS     from an ephemeral port, sends one M-SEARCH / one
                                                  mDNS query for NAME.local, listens SECONDS; prints
                                                  one JSON line per answer
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

GROUPS = {"ssdp": ("239.255.255.250", 1900), "mdns": ("224.0.0.251", 5353)}
SEARCH_TARGET = "urn:lanrage-test:service:game:1"
MAX_SECONDS = 30.0
TYPE_A, CLASS_IN = 1, 1


def m_search() -> bytes:
    return ("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n"
            f"ST: {SEARCH_TARGET}\r\n\r\n").encode()


def ssdp_answer(name: str) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=60\r\nST: {SEARCH_TARGET}\r\n"
            f"USN: uuid:{name}::{SEARCH_TARGET}\r\nLOCATION: http://{name}/game.xml\r\n\r\n").encode()


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels = []
    while offset < len(data) and data[offset] != 0:
        length = data[offset]
        if length & 0xC0:
            raise ValueError("compressed names are not used by these tools")
        labels.append(data[offset + 1:offset + 1 + length].decode())
        offset += 1 + length
    return ".".join(labels), offset + 1


def mdns_query(query_id: int, name: str) -> bytes:
    return struct.pack("!6H", query_id, 0, 1, 0, 0, 0) + encode_name(f"{name}.local") + struct.pack(
        "!2H", TYPE_A, CLASS_IN)


def mdns_answer(query: bytes, address: str) -> tuple[bytes, str]:
    """A legacy unicast answer (RFC 6762 6.7): the query's id, its question, one A record."""
    query_id = struct.unpack_from("!H", query)[0]
    name, end = read_name(query, 12)
    question = query[12:end + 4]
    record = encode_name(name) + struct.pack("!2HIH", TYPE_A, CLASS_IN, 10, 4) + socket.inet_aton(address)
    return struct.pack("!6H", query_id, 0x8400, 1, 1, 0, 0) + question + record, name


def respond(kind: str, name: str, seconds: float, address: str) -> None:
    group, port = GROUPS[kind]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + bytes(4))
    deadline = time.monotonic() + min(seconds, MAX_SECONDS)
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, (src, sport) = sock.recvfrom(9000)
        except TimeoutError:
            break
        if kind == "ssdp" and data.startswith(b"M-SEARCH") and SEARCH_TARGET.encode() in data:
            sock.sendto(ssdp_answer(name), (src, sport))
            asked = SEARCH_TARGET
        elif kind == "mdns" and len(data) > 12 and not struct.unpack_from("!H", data, 2)[0] & 0x8000:
            answer, asked = mdns_answer(data, address)
            if asked != f"{name}.local":
                continue
            sock.sendto(answer, (src, sport))
        else:
            continue
        print(json.dumps({"src": src, "sport": sport, "asked": asked}), flush=True)


def query(kind: str, name: str, seconds: float) -> None:
    group, port = GROUPS[kind]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2 if kind == "ssdp" else 255)
    query_id = int.from_bytes(os.urandom(2), "big")
    sock.sendto(m_search() if kind == "ssdp" else mdns_query(query_id, name), (group, port))
    deadline = time.monotonic() + min(seconds, MAX_SECONDS)
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, (src, sport) = sock.recvfrom(9000)
        except TimeoutError:
            break
        if kind == "ssdp":
            usn = next((line.split(":", 1)[1].strip() for line in data.decode(errors="replace").split("\r\n")
                        if line.upper().startswith("USN:")), "")
            print(json.dumps({"src": src, "sport": sport, "answer": usn}), flush=True)
        else:
            answer_id, flags, _, answers = struct.unpack_from("!4H", data)
            _, end = read_name(data, 12)
            answered, _ = read_name(data, end + 4) if answers else ("", 0)
            address = socket.inet_ntoa(data[-4:]) if answers else ""
            print(json.dumps({"src": src, "sport": sport, "answer": answered, "address": address,
                              "id_matches": answer_id == query_id, "response": bool(flags & 0x8000)}),
                  flush=True)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    mode, kind, name, seconds = argv[0], argv[1], argv[2], float(argv[3])
    if kind not in GROUPS:
        raise SystemExit(f"unknown kind {kind}")
    if mode == "respond":
        respond(kind, name, seconds, argv[4])
    elif mode == "query":
        query(kind, name, seconds)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
