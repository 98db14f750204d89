"""Relay throughput and added latency against the direct UDP path, measured in one run.

    .venv/bin/python bench/relay.py [--seconds 5] [--size 112] [--pings 5000]

The relay runs in its own process; for the throughput phase it is pinned to one core
(CPU 0) and the load generator and the receiver run in two more processes on the other
core. The latency phase runs first, unpinned (the scheduler places every process). Throughput is what the
receiver actually gets (packets/s), with the sender offering more than the relay can
take. Latency is a one-packet-at-a-time ping-pong: client -> relay -> echo -> relay ->
client, against client -> echo -> client directly; "added" is the difference of the
same percentile, for the round trip (two relay traversals) and per traversal.
Loopback only (127.0.0.1).
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import os
import select
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from mesh.relay import RelayConfig, RelayServer, issue_tickets, wire
from mesh.relay.client import hello_exchange

SECRET = os.urandom(32)
LOOPBACK = "127.0.0.1"


def pin(cpu: int) -> None:
    """Pin every thread of this process (sched_setaffinity(0) would pin only the caller)."""
    cpus = sorted(os.sched_getaffinity(0))
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), {cpus[cpu % len(cpus)]})


def wg_packet(size: int) -> bytes:
    return b"\x04\0\0\0" + b"\x01" * (size - 4)


def run_relay(ready: multiprocessing.Queue, go: multiprocessing.Event,  # type: ignore[type-arg]
              stop: multiprocessing.Event) -> None:  # type: ignore[type-arg]
    config = RelayConfig(session_pps=10_000_000, session_burst=1_000_000, sample_interval_s=60)
    server = RelayServer(SECRET, (LOOPBACK, 0), config=config)
    server.start()
    ready.put(server.address[1])
    go.wait(300)
    pin(0)  # throughput on one core; the latency phase before ran unpinned, like a real relay
    cpu_start, forwarded_start = time.process_time(), server.counters().forwarded_packets
    stop.wait(300)
    cpu = time.process_time() - cpu_start
    server.stop()
    counters = server.counters()
    ready.put((counters.forwarded_packets, counters.dropped_rate_limited, cpu,
               counters.forwarded_packets - forwarded_start))


def bound_socket(relay_port: int, ticket: object) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(2)
    if wire.parse_hello_ok(hello_exchange(sock, ticket, (LOOPBACK, relay_port))) is None:  # type: ignore[arg-type]
        raise SystemExit("relay refused the bench session")
    return sock


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_IoVec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
BATCH = 64


def _batch(size: int, packet: bytes | None) -> tuple[object, ...]:
    """A prebuilt array of BATCH messages over one buffer each (the load generator's trick:
    sendmmsg/recvmmsg move 64 datagrams per system call, so the generator is not the limit)."""
    buffers = [ctypes.create_string_buffer(packet or b"", size) for _ in range(BATCH)]
    iovecs = (_IoVec * BATCH)(*[_IoVec(ctypes.addressof(b), size) for b in buffers])
    msgs = (_MMsgHdr * BATCH)()
    for index in range(BATCH):
        msgs[index].hdr.iov = ctypes.pointer(iovecs[index])
        msgs[index].hdr.iovlen = 1
    return msgs, buffers, iovecs


def sender(sock: socket.socket, target: tuple[str, int], size: int, seconds: float,
           counts: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pin(1)
    sock.connect(target)
    msgs, *_keep = _batch(size, wg_packet(size))
    fd = sock.fileno()
    sendmmsg = _libc.sendmmsg
    deadline = time.monotonic() + seconds
    sent = 0
    while True:  # bounded by the deadline; checked every 16 batches
        for _ in range(16):
            done = sendmmsg(fd, msgs, BATCH, 0)
            if done > 0:
                sent += done
        if time.monotonic() >= deadline:
            break
    counts.put(sent)


def receiver(sock: socket.socket, seconds: float, result: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pin(1)
    msgs, *_keep = _batch(2048, None)
    fd = sock.fileno()
    recvmmsg = _libc.recvmmsg
    count = 0
    first = last = 0.0
    deadline = time.monotonic() + seconds + 3
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.5)
        if not readable:
            if count:
                break
            continue
        got = recvmmsg(fd, msgs, BATCH, socket.MSG_DONTWAIT, None)
        if got <= 0:
            continue
        now = time.perf_counter()
        if not count:
            first = now
        last = now
        count += got
    result.put((count, last - first))


def throughput(relay_port: int, pair: tuple[object, object], size: int,
               seconds: float) -> tuple[int, float, int]:
    a = bound_socket(relay_port, pair[0])
    b = bound_socket(relay_port, pair[1])
    result: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    rx = multiprocessing.Process(target=receiver, args=(b, seconds, result))
    rx.start()
    time.sleep(0.2)
    counts: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    tx = multiprocessing.Process(target=sender, args=(a, (LOOPBACK, relay_port), size, seconds, counts))
    tx.start()
    tx.join()
    rx.join()
    a.close()
    b.close()
    received, span = result.get()
    return received, span, counts.get()


def echo(sock: socket.socket, count: int) -> None:
    sock.settimeout(3)
    for _ in range(count + 10):
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            return
        sock.sendto(data, addr)


def pingpong(client: socket.socket, target: tuple[str, int], count: int, size: int) -> list[float]:
    packet = wg_packet(size)
    rtts = []
    for _ in range(count):
        start = time.perf_counter()
        client.sendto(packet, target)
        client.recv(2048)
        rtts.append((time.perf_counter() - start) * 1e6)
    return rtts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(relay_port: int, pair: tuple[object, object], pings: int, size: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    # direct: client <-> echo
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((LOOPBACK, 0))
    client.settimeout(2)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((LOOPBACK, 0))
    process = multiprocessing.Process(target=echo, args=(peer, pings))
    process.start()
    results["direct"] = pingpong(client, peer.getsockname(), pings, size)
    process.join()
    client.close()
    peer.close()
    # relayed: client -> relay -> echo -> relay -> client
    a = bound_socket(relay_port, pair[0])
    b = bound_socket(relay_port, pair[1])
    process = multiprocessing.Process(target=echo, args=(b, pings))
    process.start()
    results["relay"] = pingpong(a, (LOOPBACK, relay_port), pings, size)
    process.join()
    a.close()
    b.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=112, help="UDP payload bytes (WireGuard: 32 + 16n)")
    parser.add_argument("--pings", type=int, default=5000)
    args = parser.parse_args()
    if args.size < 32 or args.size % 16:
        print("bench: --size must be 32 + 16n (a WireGuard transport message)", file=sys.stderr)
        return 2
    ready: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    stop, go = multiprocessing.Event(), multiprocessing.Event()
    relay = multiprocessing.Process(target=run_relay, args=(ready, go, stop))
    relay.start()
    try:
        port = ready.get(timeout=10)
        pair_lat = issue_tickets(SECRET, f"{LOOPBACK}:{port}", "bench", "a", "b")
        lat = latency(port, pair_lat, args.pings, args.size)
        pair_tp = issue_tickets(SECRET, f"{LOOPBACK}:{port}", "bench", "c", "d")
        go.set()
        received, span, sent = throughput(port, pair_tp, args.size, args.seconds)
    finally:
        stop.set()
        relay.join(timeout=10)
        if relay.is_alive():
            relay.kill()
    forwarded, limited, cpu, forwarded_tp = ready.get(timeout=5)
    pps = received / span if span else 0.0
    direct, relayed = lat["direct"], lat["relay"]
    rows = []
    for label, q in (("median", 0.5), ("p99", 0.99)):
        d, r = percentile(direct, q), percentile(relayed, q)
        rows.append((label, d, r, r - d, (r - d) / 2, r / d))
    print(f"relay throughput: {pps:,.0f} packets/s of {args.size}-byte packets through one relay core "
          f"({received:,} received in {span:.2f} s; relay forwarded {forwarded:,}, rate-limited {limited})")
    print(f"  offered by the sender: {sent / args.seconds:,.0f} packets/s; relay CPU {cpu:.2f} s for "
          f"{forwarded_tp:,} packets = {forwarded_tp / cpu:,.0f} packets per CPU-second")
    print(f"  target >= 100,000 packets/s: ratio {pps / 100_000:.2f}x (per CPU-second: "
          f"{forwarded_tp / cpu / 100_000:.2f}x)")
    print(f"latency over {args.pings} ping-pongs of {args.size} bytes (microseconds, round trip):")
    print(f"  {'':8}{'direct':>10}{'relay':>10}{'added RTT':>12}{'added/hop':>12}{'relay/direct':>14}")
    for label, d, r, added, per_hop, ratio in rows:
        print(f"  {label:8}{d:10.1f}{r:10.1f}{added:12.1f}{per_hop:12.1f}{ratio:13.2f}x")
    p99_added_ms = rows[1][3] / 1000
    print(f"  target added p99 < 1 ms: {p99_added_ms:.3f} ms round trip "
          f"({'met' if p99_added_ms < 1 else 'missed'})")
    print(f"  mean direct {statistics.mean(direct):.1f} us, mean relay {statistics.mean(relayed):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
