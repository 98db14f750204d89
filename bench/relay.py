"""Relay throughput and added latency against the direct UDP path, measured in one run.

    .venv/bin/python bench/relay.py [--seconds 5] [--size 112] [--pings 5000] [--sessions 6]

The relay runs in its own process; for the throughput phases it is pinned to one core
(CPU 0) and the load generator and the receiver run in two more processes on the other
core. The latency phase runs first, unpinned (the scheduler places every process).
Throughput is what the receiver actually gets (packets/s), in three phases, each with
a fresh relay:

* default config, many sessions: ``--sessions`` sessions, each offered its default
  per-session limit (``RelayConfig.session_pps``), paced; the figure with the target
  (>= 100,000 packets/s in all);
* default config, one session flooded: what one pair gets (the per-session limit);
* limit off, one session flooded: the relay's forwarding capacity on one core.

Latency is a one-packet-at-a-time ping-pong through the default-config relay: client ->
relay -> echo -> relay -> client, against client -> echo -> client directly; "added"
is the difference of the same percentile, for the round trip (two relay traversals) and
per traversal (target: p99 added < 1 ms). Loopback only (127.0.0.1). Exits 1 when a
target is missed.
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.result import Figure, emit, load_average
from mesh.relay import RelayConfig, RelayServer, issue_tickets, wire
from mesh.relay.client import hello_exchange

SECRET = os.urandom(32)
LOOPBACK = "127.0.0.1"
DEFAULT = RelayConfig(sample_interval_s=60)  # the shipped limits; samples out of the way
UNLIMITED = RelayConfig(session_pps=10_000_000, session_burst=1_000_000, sample_interval_s=60)
TARGET_PPS = 100_000
PING_INTERVAL_S = 0.0005  # 2,000 pings/s: a fast game tick, well under the per-session limit
MAX_LOST_PINGS = 50
TARGET_ADDED_P99_MS = 1.0


def pin(cpu: int) -> None:
    """Pin every thread of this process (sched_setaffinity(0) would pin only the caller)."""
    cpus = sorted(os.sched_getaffinity(0))
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), {cpus[cpu % len(cpus)]})


def wg_packet(size: int) -> bytes:
    return b"\x04\0\0\0" + b"\x01" * (size - 4)


def run_relay(ready: multiprocessing.Queue, go: multiprocessing.Event,  # type: ignore[type-arg]
              stop: multiprocessing.Event, config: RelayConfig) -> None:  # type: ignore[type-arg]
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


def sender(socks: list[socket.socket], target: tuple[str, int], size: int, seconds: float,
           pps_each: float | None, counts: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Flood every session (``pps_each`` None), or offer each ``pps_each`` packets/s, paced."""
    pin(1)
    for sock in socks:
        sock.connect(target)
    msgs, *_keep = _batch(size, wg_packet(size))
    fds = [sock.fileno() for sock in socks]
    sendmmsg = _libc.sendmmsg
    start = time.monotonic()
    deadline = start + seconds
    sent = [0] * len(fds)
    while True:  # bounded by the deadline; checked every round
        now = time.monotonic()
        if now >= deadline:
            break
        for index, fd in enumerate(fds):
            if pps_each is None:
                rounds = 16
            else:  # whole batches due by now; the rest waits for the next round
                rounds = max(0, int(((now - start) * pps_each - sent[index]) // BATCH))
            for _ in range(rounds):
                done = sendmmsg(fd, msgs, BATCH, 0)
                if done > 0:
                    sent[index] += done
        if pps_each is not None:
            time.sleep(0.0005)
    counts.put(sum(sent))


def receiver(socks: list[socket.socket], seconds: float,
             result: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pin(1)
    msgs, *_keep = _batch(2048, None)
    recvmmsg = _libc.recvmmsg
    count = 0
    first = last = 0.0
    deadline = time.monotonic() + seconds + 3
    while time.monotonic() < deadline:
        readable, _, _ = select.select(socks, [], [], 0.5)
        if not readable:
            if count:
                break
            continue
        for sock in readable:
            got = recvmmsg(sock.fileno(), msgs, BATCH, socket.MSG_DONTWAIT, None)
            if got <= 0:
                continue
            now = time.perf_counter()
            if not count:
                first = now
            last = now
            count += got
    result.put((count, last - first))


def throughput(relay_port: int, pairs: list[tuple[object, object]], size: int, seconds: float,
               pps_each: float | None) -> tuple[int, float, int]:
    senders = [bound_socket(relay_port, pair[0]) for pair in pairs]
    receivers = [bound_socket(relay_port, pair[1]) for pair in pairs]
    result: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    rx = multiprocessing.Process(target=receiver, args=(receivers, seconds, result))
    rx.start()
    time.sleep(0.2)
    counts: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    tx = multiprocessing.Process(target=sender, args=(senders, (LOOPBACK, relay_port), size, seconds,
                                                      pps_each, counts))
    tx.start()
    tx.join()
    rx.join()
    for sock in senders + receivers:
        sock.close()
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


def pingpong(client: socket.socket, target: tuple[str, int], count: int,
             size: int) -> tuple[list[float], int]:
    """One ping in flight at a time, one every PING_INTERVAL_S (a game's tick rate, not a flood:
    back-to-back pings would run into the per-session limit). Returns RTTs and the count lost."""
    packet = wg_packet(size)
    rtts = []
    lost = 0
    for _ in range(count):
        start = time.perf_counter()
        client.sendto(packet, target)
        try:
            client.recv(2048)
        except TimeoutError:
            lost += 1
            if lost > MAX_LOST_PINGS:
                raise SystemExit(f"bench: more than {MAX_LOST_PINGS} pings lost") from None
            continue
        rtts.append((time.perf_counter() - start) * 1e6)
        time.sleep(PING_INTERVAL_S)
    return rtts, lost


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
    results["direct"], lost_direct = pingpong(client, peer.getsockname(), pings, size)
    process.join()
    client.close()
    peer.close()
    # relayed: client -> relay -> echo -> relay -> client
    a = bound_socket(relay_port, pair[0])
    b = bound_socket(relay_port, pair[1])
    process = multiprocessing.Process(target=echo, args=(b, pings))
    process.start()
    results["relay"], lost_relay = pingpong(a, (LOOPBACK, relay_port), pings, size)
    results["lost"] = [float(lost_direct), float(lost_relay)]
    process.join()
    a.close()
    b.close()
    return results


@dataclass
class Phase:
    label: str
    config: RelayConfig
    sessions: int
    pps_each: float | None  # None: flood
    received: int = 0
    span: float = 0.0
    sent: int = 0
    forwarded: int = 0
    limited: int = 0
    cpu: float = 0.0
    forwarded_tp: int = 0

    @property
    def pps(self) -> float:
        return self.received / self.span if self.span else 0.0


def run_phase(phase: Phase, size: int, seconds: float, pings: int) -> dict[str, list[float]]:
    """One fresh relay process: optionally the latency ping-pong, then the throughput phase."""
    ready: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    stop, go = multiprocessing.Event(), multiprocessing.Event()
    relay = multiprocessing.Process(target=run_relay, args=(ready, go, stop, phase.config))
    relay.start()
    lat: dict[str, list[float]] = {}
    try:
        port = ready.get(timeout=10)
        if pings:
            lat = latency(port, issue_tickets(SECRET, f"{LOOPBACK}:{port}", "bench", "a", "b"), pings, size)
        pairs = [issue_tickets(SECRET, f"{LOOPBACK}:{port}", "bench", f"c{n}", f"d{n}")
                 for n in range(phase.sessions)]
        go.set()
        phase.received, phase.span, phase.sent = throughput(port, pairs, size, seconds, phase.pps_each)
    finally:
        stop.set()
        relay.join(timeout=10)
        if relay.is_alive():
            relay.kill()
    phase.forwarded, phase.limited, phase.cpu, phase.forwarded_tp = ready.get(timeout=5)
    return lat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=112, help="UDP payload bytes (WireGuard: 32 + 16n)")
    parser.add_argument("--pings", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=6, help="sessions in the many-sessions phase")
    args = parser.parse_args()
    if args.size < 32 or args.size % 16:
        print("bench: --size must be 32 + 16n (a WireGuard transport message)", file=sys.stderr)
        return 2
    if not 1 <= args.sessions <= 256:
        print("bench: --sessions must be 1-256", file=sys.stderr)
        return 2
    phases = [
        Phase(f"default config, {args.sessions} sessions at the per-session limit", DEFAULT, args.sessions,
              DEFAULT.session_pps),
        Phase("default config, one session flooded", DEFAULT, 1, None),
        Phase("per-session limit off, one session flooded (capacity)", UNLIMITED, 1, None),
    ]
    load_before = load_average()
    lat = run_phase(phases[0], args.size, args.seconds, args.pings)
    for phase in phases[1:]:
        run_phase(phase, args.size, args.seconds, 0)
    many = phases[0]
    print(f"relay throughput, {args.size}-byte packets, relay on one core, {args.seconds:.0f} s a phase "
          f"(default per-session limit {DEFAULT.session_pps:,.0f} packets/s, "
          f"burst {DEFAULT.session_burst:,.0f}):")
    print(f"  {'phase':58}{'received/s':>12}{'offered/s':>12}{'rate-limited':>14}{'per CPU-s':>12}")
    for phase in phases:
        per_cpu = phase.forwarded_tp / phase.cpu if phase.cpu else 0.0
        print(f"  {phase.label:58}{phase.pps:12,.0f}{phase.sent / args.seconds:12,.0f}{phase.limited:14,}"
              f"{per_cpu:12,.0f}")
    print(f"  target >= {TARGET_PPS:,} packets/s with the default config ({args.sessions} sessions): "
          f"{many.pps / TARGET_PPS:.2f}x ({'met' if many.pps >= TARGET_PPS else 'missed'})")
    direct, relayed = lat["direct"], lat["relay"]
    rows = []
    for label, q in (("median", 0.5), ("p99", 0.99)):
        d, r = percentile(direct, q), percentile(relayed, q)
        rows.append((label, d, r, r - d, (r - d) / 2, r / d))
    print(f"latency over {args.pings} ping-pongs of {args.size} bytes through the default-config relay "
          "(microseconds, round trip):")
    print(f"  {'':8}{'direct':>10}{'relay':>10}{'added RTT':>12}{'added/hop':>12}{'relay/direct':>14}")
    for label, d, r, added, per_hop, ratio in rows:
        print(f"  {label:8}{d:10.1f}{r:10.1f}{added:12.1f}{per_hop:12.1f}{ratio:13.2f}x")
    p99_added_ms = rows[1][3] / 1000
    print(f"  target added p99 < {TARGET_ADDED_P99_MS:.0f} ms: {p99_added_ms:.3f} ms round trip "
          f"({'met' if p99_added_ms < TARGET_ADDED_P99_MS else 'missed'})")
    print(f"  mean direct {statistics.mean(direct):.1f} us, mean relay {statistics.mean(relayed):.1f} us; "
          f"one ping every {PING_INTERVAL_S * 1000:.1f} ms; lost {lat['lost'][0]:.0f} direct, "
          f"{lat['lost'][1]:.0f} relayed")
    median_row, p99_row = rows
    emit("relay", [
        Figure(f"relay, default config, {args.sessions} sessions", many.pps, "packets/s", None, "",
               f"≥ {TARGET_PPS:,} packets/s", many.pps >= TARGET_PPS),
        Figure("relay, default config, one session flooded", phases[1].pps, "packets/s"),
        Figure("relay, limit off, one session flooded (capacity)", phases[2].pps, "packets/s"),
        Figure("round trip through the relay, p99", p99_row[2], "µs", p99_row[1], "the direct UDP path, p99",
               f"added < {TARGET_ADDED_P99_MS * 1000:,.0f} µs", p99_added_ms < TARGET_ADDED_P99_MS, 1),
        Figure("round trip through the relay, median", median_row[2], "µs", median_row[1],
               "the direct UDP path, median", digits=1),
    ], load_before)
    return 0 if many.pps >= TARGET_PPS and p99_added_ms < TARGET_ADDED_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
