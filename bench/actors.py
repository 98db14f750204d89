"""Benchmark of the actor core: persisted transitions/s, and PSS and idle CPU of a node.

    .venv/bin/python bench/actors.py                 # production base, both hostings
    .venv/bin/python bench/actors.py --quick         # shorter runs
    .venv/bin/python bench/actors.py --base simpleSystemBase --hosting process

Throughput: observations alternating 50/250 ms are told to the node actor in
batches (one Observations message each); every observation is one persisted
ConnectionStateChanged in the SQLite store (a file in a temporary directory). The
clock stops when the store holds them all. Memory and idle CPU: a node with one
party of 16 remote peers on the simulated network, default timers (probe every
5 s, relay probes every 30 s), summed over every process of the actor system
(PSS from /proc/<pid>/smaps_rollup, CPU from /proc/<pid>/stat).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from thespian.actors import ActorAddress, ActorSystem

import events  # noqa: F401
from actors import messages as m
from actors.config import INLINE, PROCESS, ActorConfig, ConnectionConfig
from actors.system import start_node, start_system
from events.streams import peer_stream
from lab.ports import free_port

BUDGET_PSS_MB = 120.0
BUDGET_IDLE_CPU = 1.0  # percent of one core
BUDGET_RATE = 2000.0  # persisted transitions per second
TICK = os.sysconf("SC_CLK_TCK")
RELAYS = ("198.51.100.10:3478", "198.51.100.11:3478")


def system_pids() -> list[int]:
    """The actor system's processes: thespian's admin daemonizes (its parent becomes init), so
    find them as forks of this process: same command line, started no earlier than this one."""
    def start_time(pid: int | str) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

    me = os.getpid()
    cmdline = Path("/proc/self/cmdline").read_bytes()
    mine = start_time(me)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == cmdline and start_time(entry) >= mine:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])



def start(base: str, hosting: str, workdir: Path,
          config: ActorConfig) -> tuple[ActorSystem, ActorAddress, str]:
    system = start_system(base, admin_port=free_port() if base != "simpleSystemBase" else None)
    url = f"sqlite:///{workdir / 'events.db'}"
    spec = m.AdapterSpec.of("mesh.sim:adapters", network_name="bench", node="bench",
                            candidates=("203.0.113.1:51820",))
    node = start_node(system, m.StartNode("bench", m.StoreSpec(url), spec, RELAYS,
                                          replace(config, peer_hosting=hosting), m.LogSpec("WARNING")))
    return system, node, url


def open_party(system: ActorSystem, node: ActorAddress, peers: int) -> None:
    reply = system.ask(node, m.CreateParty("bench", "bench", "local", "Local"), 30)
    assert isinstance(reply, m.PartyOpened), reply
    for index in range(peers):
        system.tell(node, m.PeerAnnounced("bench", f"peer{index:02d}", f"Peer {index}",
                                          f"key-{index:02d}", candidates=(f"203.0.113.{100 + index}:51820",)))


def wait_connected(system: ActorSystem, node: ActorAddress, peers: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = system.ask(node, m.StatusQuery(), 10)
        if isinstance(status, m.NodeStatus) and status.parties:
            states = [p.connection.state for p in status.parties[0].peers if p.connection]
            if len(states) == peers and all(s in ("connected", "degraded") for s in states):
                return
        time.sleep(0.5)
    raise RuntimeError("peers did not connect in time")


def throughput(base: str, hosting: str, batch: int, total: int, to_party: bool = False
               ) -> tuple[float, int, int]:
    from store import open_store

    config = ActorConfig(connection=ConnectionConfig(probe_interval_s=3600, metrics_interval_s=3600))
    with tempfile.TemporaryDirectory() as tmp:
        system, node, url = start(base, hosting, Path(tmp), config)
        reader = open_store(url)
        try:
            open_party(system, node, 1)
            stream = peer_stream("bench", "bench", "peer00")
            deadline = time.monotonic() + 30
            while reader.stream_position(stream) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            begin_position = reader.stream_position(stream)
            target = dict(system.ask(node, m.ChildrenQuery(), 10).children)["bench"] if to_party else node
            batches = total // batch
            began = time.time()
            for index in range(batches):
                # The fraction numbers the observation, to detect reordering in the stored log.
                items = tuple(m.LatencyObserved((250.0 if n % 2 == 0 else 50.0) + n / 1e6)
                              for n in range(index * batch, index * batch + batch))
                system.tell(target, m.Observations("bench", "peer00", items))
            # Thespian's TCP transport may reorder messages across hops (two 250s in a row make
            # one transition, not two): count what was persisted, until the stream is quiet.
            expected, last, quiet_since = begin_position + batches * batch, -1, time.monotonic()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                position = reader.stream_position(stream)
                if position >= expected:
                    break
                if position != last:
                    last, quiet_since = position, time.monotonic()
                elif time.monotonic() - quiet_since > 3:
                    break
                time.sleep(0.01)
            records = reader.read_stream(stream, begin_position + 1)
            elapsed = records[-1].recorded_at.timestamp() - began
            numbers = [round((r.event.latency_ms % 50) * 1e6) for r in records
                       if r.event_type == "ConnectionStateChanged"]
            reordered = sum(b < a for a, b in itertools.pairwise(numbers))
            if reordered:
                print(f"  {reordered} observations arrived out of order")
            return len(numbers) / elapsed, len(numbers), batches * batch
        finally:
            reader.close()
            system.shutdown()


def footprint(base: str, hosting: str, peers: int, idle_s: float) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        system, node, _ = start(base, hosting, Path(tmp), ActorConfig())
        try:
            open_party(system, node, peers)
            wait_connected(system, node, peers)
            time.sleep(2)
            pids = [os.getpid()] if base == "simpleSystemBase" else system_pids()
            each = sorted((pss_kb(pid) / 1024 for pid in pids), reverse=True)
            pss = sum(each)
            print(f"  per process PSS MB: {', '.join(f'{v:.1f}' for v in each)}")
            before = sum(cpu_ticks(pid) for pid in pids)
            began = time.monotonic()
            time.sleep(idle_s)
            used = (sum(cpu_ticks(pid) for pid in pids) - before) / TICK
            cpu = 100.0 * used / (time.monotonic() - began)
            return pss, cpu, len(pids)
        finally:
            system.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="multiprocTCPBase")
    parser.add_argument("--hosting", choices=(INLINE, PROCESS, "both"), default="both")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--footprint-only", action="store_true", help="skip the throughput runs")
    parser.add_argument("--to-party", action="store_true",
                        help="send observations to the party actor, not through the node")
    args = parser.parse_args()
    hostings = (INLINE, PROCESS) if args.hosting == "both" else (args.hosting,)
    total = 2000 if args.quick else 10000
    idle_s = 5.0 if args.quick else 20.0
    runs = 1 if args.quick else args.runs
    route = "node -> party" if not args.to_party else "party"
    print(f"base {args.base}, observations told to the {route}; "
          f"budget: <= {BUDGET_PSS_MB:.0f} MB PSS, <= {BUDGET_IDLE_CPU:.0f}% idle CPU, "
          f">= {BUDGET_RATE:.0f} persisted transitions/s")
    for hosting in hostings:
        for batch in () if args.footprint_only else (1, 10, 100):
            n = min(total, 1000) if batch == 1 else total
            rates, persisted, sent = [], 0, 0
            for _ in range(runs):
                rate, transitions, observations = throughput(args.base, hosting, batch, n, args.to_party)
                rates.append(rate)
                persisted, sent = persisted + transitions, sent + observations
            rate = statistics.median(rates)
            verdict = "ok" if rate >= BUDGET_RATE else "below budget"
            print(f"{hosting:8} transitions/s, batch {batch:3}: median {rate:9.0f} of {runs} "
                  f"({', '.join(f'{r:.0f}' for r in rates)}) {verdict}; "
                  f"{persisted} transitions from {sent} observations")
        pss, cpu, processes = footprint(args.base, hosting, 16, idle_s)
        print(f"{hosting:8} 16-peer node: {processes} processes, PSS {pss:.1f} MB "
              f"({'ok' if pss <= BUDGET_PSS_MB else 'over budget'}), idle CPU {cpu:.2f}% of one core "
              f"over {idle_s:.0f} s ({'ok' if cpu <= BUDGET_IDLE_CPU else 'over budget'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
