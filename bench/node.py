"""The node agent's footprint and its join path, through real `serve` agents in the lab.

    python bench/node.py [--runs 3] [--peers 16]      (as root; builds its own lab)

What it measures, with `serve`'s defaults (the path production uses):

- memory: the proportional set size (PSS, /proc/PID/smaps_rollup) of the whole process
  tree of one `serve` (the agent and its actors in one process, and wireguard-go), with
  no party, and in a party with ``--peers`` others, all connected;
- idle CPU: the CPU time of that tree (its exited children included, e.g. probes) over
  ``IDLE_WINDOW_S`` of wall time, as a share of one core, in both situations;
- joins: ``--peers`` agents POST /party/join to their own API at the same instant, and
  the clock stops when the host's log has a ``connected`` transition for every one of
  them; the baseline is one agent joining alone, to the same host, in the same run.
  Every host is behind a symmetric NAT, so every pair goes through a relay. Each join
  prints the CPU the whole lab used meanwhile (host, guests, control server, relays) and
  the host's stages per peer (learns of the join, relay session open, WireGuard
  configured, first probe answered): 16 guests joining at once build a full mesh of 136
  pairs on the same cores, so the lab's CPU bounds the wall time from below.

Targets on a 2-core machine: <= 100 MB PSS with 16 peers, <= 0.5 % idle CPU, and the
median of 16 joins at once <= 2 x the median of one join. Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from bench.result import Figure, emit, load_average
from demo.party import LabParty
from lab import HostSpec, Lab

IDLE_WINDOW_S = 30.0
CONNECT_TIMEOUT_S = 90.0
MAX_PSS_MB = 100.0
MAX_IDLE_CPU = 0.5  # percent of one core
MAX_JOIN_RATIO = 2.0
HOST = "alice"

# Runs inside a guest's namespace: wait for the agreed instant, then join through the API.
JOIN_SCRIPT = """
import json, sys, time, urllib.request
state, invite, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
token = open(state + "/api-token").read().strip()
time.sleep(max(0.0, at - time.time()))
request = urllib.request.Request("http://127.0.0.1:8666/party/join", method="POST",
                                 data=json.dumps({"invite": invite}).encode(),
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=60).read().decode())
"""


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total


def by_program(pids: list[int]) -> dict[str, tuple[int, float]]:
    """program name -> (CPU ticks, PSS MB), to say where the footprint goes."""
    found: dict[str, tuple[int, float]] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        ticks, memory = found.get(name, (0, 0.0))
        found[name] = (ticks + cpu_ticks([pid]), memory + pss_mb([pid]))
    return found


def footprint(pid: int) -> tuple[float, float]:
    """(PSS in MB, idle CPU in % of one core) of ``pid``'s tree; prints the share of each program."""
    pids = tree(pid)
    memory = pss_mb(pids)
    before, started = by_program(pids), time.monotonic()
    time.sleep(IDLE_WINDOW_S)
    after, elapsed = by_program(tree(pid)), time.monotonic() - started
    hertz = os.sysconf("SC_CLK_TCK")
    shares = {name: 100 * (ticks - before.get(name, (0, 0.0))[0]) / hertz / elapsed
              for name, (ticks, _) in after.items()}
    print("  " + ", ".join(f"{name}: {after[name][1]:.1f} MB, {share:.2f} % CPU"
                           for name, share in sorted(shares.items())))
    return memory, sum(shares.values())


def connected_times(party: LabParty, party_id: str) -> dict[str, datetime]:
    """peer id -> first time the host recorded it connected, read from its SQLite log."""
    database = Path(party.state(HOST)) / "lanrage.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute(
            "SELECT stream_id, MIN(recorded_at) FROM events "
            "WHERE event_type = 'ConnectionStateChanged' AND json_extract(payload, '$.party_id') = ? "
            "AND json_extract(payload, '$.to_state') IN ('connected', 'degraded') GROUP BY stream_id",
            (party_id,)).fetchall()
    return {stream.rsplit(":", 1)[1]: datetime.fromisoformat(at).replace(tzinfo=UTC) for stream, at in rows}


STAGES = (("PeerJoined", "host learns of the join"), ("RelaySessionOpened", "relay session open"),
          ("WireGuardPeerConfigured", "WireGuard configured"), ("connected", "first probe answered"))


def stages(party: LabParty, party_id: str, peers: set[str], start: datetime) -> dict[str, list[float]]:
    """Per stage of the host's side, the seconds from the agreed instant at which each peer reached it."""
    database = Path(party.state(HOST)) / "lanrage.db"
    found: dict[str, dict[str, float]] = {}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute(
            "SELECT event_type, json_extract(payload, '$.peer_id'), json_extract(payload, '$.to_state'), "
            "recorded_at FROM events WHERE json_extract(payload, '$.party_id') = ? ORDER BY global_position",
            (party_id,)).fetchall()
    for kind, peer, to_state, at in rows:
        up = kind == "ConnectionStateChanged" and to_state in ("connected", "degraded")
        name = "connected" if up else kind
        seconds = (datetime.fromisoformat(at).replace(tzinfo=UTC) - start).total_seconds()
        if peer in peers and name in dict(STAGES):
            found.setdefault(name, {}).setdefault(peer, seconds)
    return {name: sorted(found.get(name, {}).values()) for name, _ in STAGES}


def lab_cpu_s(party: LabParty) -> dict[str, float]:
    """CPU seconds used so far by each part of the lab: host, guests, control server, relays."""
    hertz = os.sysconf("SC_CLK_TCK")
    parts = {"host": [party.agents[HOST].pid],
             "guests": [proc.pid for host, proc in party.agents.items() if host != HOST],
             "control": [party.control.pid] if party.control is not None else [],
             "relays": [proc.pid for proc in party.relay_processes.values()]}
    return {name: sum(cpu_ticks(tree(pid)) for pid in pids) / hertz for name, pids in parts.items()}


def join_at_once(party: LabParty, guests: list[str]) -> float:
    """Seconds from the agreed instant until the host has every guest connected."""
    created = party.create(HOST, f"bench-{len(guests)}-{time.time():.0f}")
    at = time.time() + 1.0
    procs = [party.lab.popen(guest, [sys.executable, "-c", JOIN_SCRIPT, party.state(guest),
                                     created["invite"], repr(at)]) for guest in guests]
    time.sleep(max(0.0, at - time.time()))
    cpu_before = lab_cpu_s(party)
    peer_ids = {}
    for guest, proc in zip(guests, procs, strict=True):
        proc.wait(CONNECT_TIMEOUT_S)
        peer_ids[guest] = json.loads(proc.output().strip().splitlines()[-1])["local_peer_id"]
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        seen = connected_times(party, created["party_id"])
        if all(peer in seen for peer in peer_ids.values()):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"not every guest connected within {CONNECT_TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    start = datetime.fromtimestamp(at, UTC)
    times = sorted((seen[peer] - start).total_seconds() for peer in peer_ids.values())
    elapsed = times[-1]
    # The lab's CPU until the last connection (measured up to now: a little after it).
    used = {name: spent - cpu_before[name] for name, spent in lab_cpu_s(party).items()}
    waited = time.time() - at
    print(f"  lab CPU in the {waited:.1f} s since the instant: {sum(used.values()):.2f} s "
          f"({', '.join(f'{name} {spent:.2f}' for name, spent in used.items())}) on {os.cpu_count()} cores")
    reached = stages(party, created["party_id"], set(peer_ids.values()), start)
    print("  host's side, s from the instant (first / median / last): " + "; ".join(
        f"{label} {values[0]:.2f}/{statistics.median(values):.2f}/{values[-1]:.2f}"
        for (name, label), values in ((stage, reached[stage[0]]) for stage in STAGES) if values))
    if len(times) > 1:
        print(f"  connected after {', '.join(f'{t:.2f}' for t in times)} s")
    for guest in guests:
        party.leave(guest)
    party.leave(HOST)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="copy the host's event log here before the lab goes")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/node.py builds a network lab: run it as root")
    load_before = load_average()
    guests = [f"p{i:02d}" for i in range(1, args.peers + 1)]
    hosts = [HostSpec(name, "symmetric") for name in (HOST, *guests)]
    with Lab.build(hosts=hosts, relays=2) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents([HOST, *guests])
        pid = party.agents[HOST].pid
        time.sleep(5)  # let start-up settle
        idle_memory, idle_cpu = footprint(pid)
        print(f"serve, no party:        PSS {idle_memory:6.1f} MB   idle CPU {idle_cpu:.2f} %")
        one = [join_at_once(party, guests[:1]) for _ in range(args.runs)]
        many = [join_at_once(party, guests) for _ in range(args.runs)]
        print(f"1 join:                 {', '.join(f'{t:.2f}' for t in one)} s "
              f"(median {statistics.median(one):.2f})")
        print(f"{args.peers} joins at once:      {', '.join(f'{t:.2f}' for t in many)} s "
              f"(median {statistics.median(many):.2f})")
        made = party.create(HOST, "bench-idle")
        at = time.time() + 0.5
        procs = [lab.popen(g, [sys.executable, "-c", JOIN_SCRIPT, party.state(g), made["invite"], repr(at)])
                 for g in guests]
        for proc in procs:
            proc.wait(CONNECT_TIMEOUT_S)
        time.sleep(20)  # every connection up and past its first probes
        rows = party.status(HOST)["parties"][0]["peers"]
        connected = sum(1 for row in rows if row.get("state") == "connected")
        busy_memory, busy_cpu = footprint(pid)
        if args.keep:
            import shutil

            shutil.copytree(party.state(HOST), args.keep, dirs_exist_ok=True)
        print(f"serve, {args.peers} peers ({connected} connected): PSS {busy_memory:6.1f} MB   "
              f"idle CPU {busy_cpu:.2f} %")
    ratio = statistics.median(many) / statistics.median(one)
    print(f"ratio {args.peers} joins / 1 join: {ratio:.2f} (target <= {MAX_JOIN_RATIO})")
    missed = []
    if busy_memory > MAX_PSS_MB:
        missed.append(f"PSS {busy_memory:.1f} MB > {MAX_PSS_MB:.0f} MB")
    if max(idle_cpu, busy_cpu) > MAX_IDLE_CPU:
        missed.append(f"idle CPU {max(idle_cpu, busy_cpu):.2f} % > {MAX_IDLE_CPU} %")
    if ratio > MAX_JOIN_RATIO:
        missed.append(f"joins ratio {ratio:.2f} > {MAX_JOIN_RATIO}")
    if connected != args.peers:
        missed.append(f"only {connected} of {args.peers} peers connected for the idle figure")
    print("MISSED: " + "; ".join(missed) if missed else "all targets met")
    emit("node", [
        Figure("PSS of the `serve` tree, no party", idle_memory, "MB", digits=1),
        Figure(f"PSS of the `serve` tree, {args.peers} peers", busy_memory, "MB", None, "",
               f"≤ {MAX_PSS_MB:.0f} MB", busy_memory <= MAX_PSS_MB, 1),
        Figure("idle CPU of the `serve` tree, no party", idle_cpu, "%", None, "", f"≤ {MAX_IDLE_CPU} %",
               idle_cpu <= MAX_IDLE_CPU),
        Figure(f"idle CPU of the `serve` tree, {args.peers} peers ({connected} connected)", busy_cpu, "%",
               None, "", f"≤ {MAX_IDLE_CPU} %", busy_cpu <= MAX_IDLE_CPU and connected == args.peers),
        Figure(f"{args.peers} joins at once, median", statistics.median(many), "s", statistics.median(one),
               "one join alone", f"≤ {MAX_JOIN_RATIO:g}x the baseline", ratio <= MAX_JOIN_RATIO),
    ], load_before)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
