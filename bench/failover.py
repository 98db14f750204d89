"""Failover: how fast a broken path is noticed and how fast traffic flows again, per fault.

    python bench/failover.py [--runs 5] [--long] [--loss-window 60]   (as root; builds its own lab)
    python bench/failover.py --quick                                  (one run of a subset: minutes)
    python bench/failover.py --only "uplink cut" --long                (some faults; "loss": the loss windows)

One lab, `serve`'s defaults (the path production uses): alice behind a port-restricted
cone NAT, bob behind a port-forwarded router, carl behind a symmetric NAT, two relays;
alice-bob and bob-carl are direct, alice-carl is relayed. Per fault and run:

- detection: from the fault to the first transition (``ConnectionStateChanged`` or
  ``PathSwitched``) about the pair in either end's log (``lanrage events --json``);
- recovery: from the fault's end (for a cut path or a dead relay, which do not end: from
  the fault) to the first echo reply across the tunnel (``ping -D -i 0.1`` started then);
- for a restarted agent, recovery runs from the kill, its start-up included; for the control
  server, recovery is until every agent's control session is connected again (read
  from ``status --json``, about 0.5 s a look) and the pings lost meanwhile are counted.

Faults: the direct path cut (alice-bob blocked at alice's router), the relayed path cut
(carl's router drops the pair's relay), the pair's relay killed (-9), uplink cuts of bob
and carl at once for 15 s and 60 s (5 min with ``--long``; alice's game sends to them
for the first 10 s, then gives up; measured on alice's two pairs and on bob-carl, whose
ends are both cut), an agent restart (carl's
``serve`` and its wireguard-go killed -9 at once, as the shipped unit's ``KillMode=mixed``
does after a crash, and started again), a control server restart (-9), and a NAT
rebinding (every router's conntrack flushed and its UDP mappings moved to new ports).
Then random loss of 5, 20 and 50 % on alice's uplink for ``--loss-window`` seconds,
counting alice's path switches.

The baseline, in the same run: join to first reply of a fresh pair (direct alice-bob,
relayed alice-carl), as bench/connect.py measures; recovery is printed as a ratio of it.
Targets (median over the runs): detection <= 2 s, recovery <= 5 s; 0 path switches at
5 % and 20 % loss, at most one a minute per peer at 50 %. Exits 1 on any miss.
A recovery later than 5 s (or none) is printed at once with what both ends of the pair
logged about each other since the fault: why it was late.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from bench.result import Figure, emit, load_average
from demo.party import LabParty
from lab import HostSpec, Lab, LabProcess

DETECTION_TARGET_S = 2.0
RECOVERY_TARGET_S = 5.0
RECOVERY_LIMIT_S = 60.0  # a pinger gives up after this: recovery "none"
SETTLE_LIMIT_S = 45.0  # back to the starting paths between runs (direct retry is 30 s), else re-form
PING_INTERVAL_S = 0.1
# During an uplink cut alice plays (a game's chatter, answered) and her game drops the silent
# players after a while: fast detection watches a tunnel that sends; an idle one is probed
# once a probe interval, and its cut is seen at that probe.
GAME_INTERVAL_S = 0.05
GAME_WARM_UP_S = 2.0
GAME_GIVES_UP_S = 10.0
PATH_EVENTS = ("ConnectionStateChanged", "PathSwitched")
# What each end recorded about the other when a recovery missed its target: why it was late.
STORY_EVENTS = (*PATH_EVENTS, "PathChosen", "RelayAllocationRequested", "RelaySessionOpened",
                "RelayAllocationFailed", "NoPathAvailable", "HolePunchFailed", "EndpointChanged",
                "WireGuardPeerConfigured")
HOSTS = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
         HostSpec("carl", "symmetric")]
NAMES = [spec.name for spec in HOSTS]
DIRECT, RELAYED = ("alice", "bob"), ("alice", "carl")
BOTH_CUT = ("bob", "carl")  # an uplink cut's pair whose two ends are cut (direct; idle: no game between them)
LOSS_LEVELS = (0.05, 0.20, 0.50)
LOSS_HOST = "alice"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]


@dataclass
class Row:
    """One line of the report: a fault as one pair sees it, over the runs."""

    name: str
    detection_expected: bool = True
    detections: list[float | None] = field(default_factory=list)
    recoveries: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def _summary(values: list[float | None]) -> str:
        found = [v for v in values if v is not None]
        missing = len(values) - len(found)
        if not found:
            return f"none in {len(values)}" if values else "-"
        text = f"{statistics.median(found):6.2f} / {p95(found):6.2f}"
        return text + (f" ({missing} none)" if missing else "")

    def misses(self) -> list[str]:
        found: list[str] = []
        for label, values, target, wanted in (
                ("detection", self.detections, DETECTION_TARGET_S, self.detection_expected),
                ("recovery", self.recoveries, RECOVERY_TARGET_S, True)):
            if not wanted or not values:
                continue
            measured = [v for v in values if v is not None]
            if len(measured) < len(values):
                found.append(f"{self.name}: {label} missing in {len(values) - len(measured)} "
                             f"of {len(values)} runs")
            elif statistics.median(measured) > target:
                found.append(f"{self.name}: {label} median {statistics.median(measured):.2f} s "
                             f"> {target:g} s")
        return found


class Bench:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.party = LabParty(lab)
        self.ips: dict[str, str] = {}
        self.invite = ""
        self.baseline: dict[str, float | None] = {}

    # ------------------------------------------------------------ the party

    def start(self) -> None:
        self.party.start_services()
        self.party.start_agents(NAMES)
        self.form()

    def form(self) -> None:
        """alice creates the party; bob, then carl join: the join-to-first-reply baseline."""
        created = self.party.create("alice", "failover")
        self.invite = created["invite"]
        self.ips = {"alice": created["virtual_ip"]}
        for name, kind in (("bob", "direct"), ("carl", "relayed")):
            started = time.time()
            self.ips[name] = self.party.join(name, self.invite)["virtual_ip"]
            replied = self.first_reply("alice", name, started)
            self.baseline.setdefault(kind, replied)
        self.settle()

    def paths(self) -> dict[tuple[str, str], tuple[str | None, str | None]]:
        found = {}
        for host in NAMES:
            for name, row in self.party.peers(host).items():
                if name != host:
                    found[(host, name)] = (row["state"], row["path"])
        return found

    def settle(self) -> None:
        """Until every connection is connected, alice-bob direct and alice-carl relayed, as
        at the start (a fault's aftermath must not be measured as the next fault's)."""
        wanted = {DIRECT: "direct", DIRECT[::-1]: "direct", RELAYED: "relay", RELAYED[::-1]: "relay"}
        deadline = time.monotonic() + SETTLE_LIMIT_S
        seen: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        while time.monotonic() < deadline:
            seen = self.paths()
            if len(seen) == 6 and all(state == "connected" for state, _ in seen.values()) \
                    and all(seen[pair][1] == path for pair, path in wanted.items()):
                return
            time.sleep(1.0)
        print(f"  (not settled within {SETTLE_LIMIT_S:g} s: {seen}; the party is formed again)", flush=True)
        for name in NAMES:
            self.party.cli(name, "party", "leave", "--state-dir", self.party.state(name), check=False)
        self.form()

    # ------------------------------------------------------------ measuring

    def pinger(self, source: str, target: str) -> LabProcess:
        return self.lab.popen(source, ["ping", "-n", "-D", "-O", "-i", str(PING_INTERVAL_S), "-W", "1",
                                       "-w", str(int(RECOVERY_LIMIT_S)), self.ips[target]])

    def first_reply_of(self, pinger: LabProcess, since: float) -> float | None:
        """Seconds from ``since`` (wall clock) to the pinger's first reply after it; stops it."""
        deadline = time.monotonic() + RECOVERY_LIMIT_S + 5
        try:
            while time.monotonic() < deadline:
                for line in pinger.output().splitlines():
                    if line.startswith("[") and " bytes from " in line \
                            and float(line[1:line.index("]")]) >= since:
                        return float(line[1:line.index("]")]) - since
                if not pinger.alive:
                    return None
                time.sleep(0.05)
            return None
        finally:
            if pinger.alive:
                self.lab.kill(pinger, signal.SIGINT)

    def first_reply(self, source: str, target: str, since: float) -> float | None:
        return self.first_reply_of(self.pinger(source, target), since)

    def lost_replies(self, pinger: LabProcess) -> int:
        """Echo requests the pinger got no reply to (it has exited)."""
        transmitted = received = 0
        for line in pinger.output().splitlines():
            if "packets transmitted" in line:
                parts = line.split(",")
                transmitted, received = int(parts[0].split()[0]), int(parts[1].split()[0])
        return transmitted - received

    def detection(self, pair: tuple[str, str], since: float) -> float | None:
        """Seconds from ``since`` (wall clock) to the first transition about the pair in
        either end's log."""
        first: float | None = None
        for host, peer in (pair, pair[::-1]):
            peer_id = self.party.peers(host)[peer]["peer_id"]
            for record in self.party.events(host, *PATH_EVENTS):
                at = datetime.fromisoformat(record["recorded_at"]).timestamp()
                if record["payload"]["peer_id"] == peer_id and at > since:
                    first = at - since if first is None else min(first, at - since)
                    break
        return first

    def recovered(self, row: Row, pair: tuple[str, str], recovery: float | None, fault_at: float) -> None:
        """Records ``recovery``; a late or missing one is printed with what both ends logged."""
        row.recoveries.append(recovery)
        if recovery is not None and recovery <= RECOVERY_TARGET_S:
            return
        took = f"{recovery:.2f} s" if recovery is not None else "none"
        print(f"  {row.name}: {pair[0]}-{pair[1]} recovery {took}; what each end logged:", flush=True)
        for host, peer in (pair, pair[::-1]):
            peer_id = self.party.peers(host)[peer]["peer_id"]
            for record in self.party.events(host, *STORY_EVENTS):
                offset = datetime.fromisoformat(record["recorded_at"]).timestamp() - fault_at
                if record["payload"].get("peer_id") == peer_id and offset > -1:
                    detail = {k: v for k, v in record["payload"].items() if k in (
                        "to_state", "reason", "path", "to_path", "relay", "to_relay", "session_id",
                        "error", "purpose", "new_endpoint", "endpoint")}
                    line = f"    {offset:8.2f} {host}->{peer} {record['event_type']} {detail}"
                    print(line[:240], flush=True)

    def relay_of(self, pair: tuple[str, str]) -> str:
        relay = self.party.peers(pair[0])[pair[1]]["relay"]
        assert relay in self.party.relay_processes, f"{pair} is not relayed ({relay})"
        return str(relay)

    # ------------------------------------------------------------ the faults (one run each)

    def direct_path_cut(self, rows: dict[str, Row]) -> None:
        at = time.time()
        self.lab.block_path(*DIRECT)
        try:
            recovery = self.first_reply(*DIRECT, at)
            rows["direct path cut"].recoveries.append(recovery)
            rows["direct path cut"].detections.append(self.detection(DIRECT, at))
        finally:
            self.lab.unblock_path(*DIRECT)

    def relayed_path_cut(self, rows: dict[str, Row]) -> None:
        relay = self.relay_of(RELAYED)
        relay_host = self.lab.relays[self.party.relays.index(relay)].name
        at = time.time()
        self.lab.block_path("carl", relay_host)
        try:
            self.recovered(rows["relayed path cut"], RELAYED, self.first_reply(*RELAYED, at), at)
            rows["relayed path cut"].detections.append(self.detection(RELAYED, at))
        finally:
            self.lab.unblock_path("carl", relay_host)

    def relay_killed(self, rows: dict[str, Row]) -> None:
        relay = self.relay_of(RELAYED)
        self.party.kill_hard(self.party.relay_processes[relay])
        at = time.time()
        try:
            self.recovered(rows["relay killed"], RELAYED, self.first_reply(*RELAYED, at), at)
            rows["relay killed"].detections.append(self.detection(RELAYED, at))
        finally:
            self.party.start_relay(relay)

    def uplink_cut(self, rows: dict[str, Row], outage_s: float) -> None:
        """alice plays (``GAME_INTERVAL_S``) when bob's and carl's uplinks are cut; her game
        gives up on them after ``GAME_GIVES_UP_S``, so the tunnels are idle when they return."""
        games = [self.lab.popen("alice", ["ping", "-n", "-q", "-i", str(GAME_INTERVAL_S), "-W", "1", "-w",
                                          str(int(GAME_WARM_UP_S + GAME_GIVES_UP_S)), self.ips[peer]])
                 for peer in ("bob", "carl")]
        time.sleep(GAME_WARM_UP_S)
        at = time.time()
        for name in ("bob", "carl"):
            self.lab.cut_uplink(name)
        time.sleep(outage_s)
        for name in ("bob", "carl"):
            self.lab.restore_uplink(name)
        restored = time.time()
        for game in games:
            if game.alive:
                self.lab.kill(game, signal.SIGINT)
        pingers = {pair: self.pinger(*pair) for pair in (DIRECT, RELAYED, BOTH_CUT)}
        for kind, pair in (("direct", DIRECT), ("relayed", RELAYED), ("both ends cut", BOTH_CUT)):
            row = rows[f"uplink cut {outage_s:g} s, {kind}"]
            self.recovered(row, pair, self.first_reply_of(pingers[pair], restored), at)
            row.detections.append(self.detection(pair, at))

    def agent_restart(self, rows: dict[str, Row]) -> None:
        at = time.time()
        self.party.kill_unit(self.party.agents["carl"])  # serve and wireguard-go, as the unit would
        self.party.start_agent("carl")
        pingers = {pair: self.pinger(*pair) for pair in (("bob", "carl"), ("alice", "carl"))}
        for kind, pair in (("direct", ("bob", "carl")), ("relayed", ("alice", "carl"))):
            row = rows[f"agent restart, {kind}"]
            self.recovered(row, pair, self.first_reply_of(pingers[pair], at), at)
            row.detections.append(self.detection(pair, at))

    def control_restart(self, rows: dict[str, Row]) -> None:
        row = rows["control server restart"]
        pinger = self.pinger(*RELAYED)
        time.sleep(1.0)
        assert self.party.control is not None
        at = time.time()
        self.party.kill_hard(self.party.control)
        self.party.start_control()
        up = time.time()
        back: float | None = None
        while time.time() - up < RECOVERY_LIMIT_S:
            if all(session["connected"] for host in NAMES
                   for session in self.party.status(host)["agent"]["control"]):
                back = time.time() - up
                break
        self.lab.kill(pinger, signal.SIGINT)
        row.recoveries.append(back)
        row.detections.append(self.detection(RELAYED, at))
        row.notes.append(str(self.lost_replies(pinger)))

    def nat_rebinding(self, rows: dict[str, Row]) -> None:
        at = time.time()
        for name in NAMES:
            self.lab.rebind_nat(name)
        pingers = {pair: self.pinger(*pair) for pair in (DIRECT, RELAYED)}
        for kind, pair in (("direct", DIRECT), ("relayed", RELAYED)):
            row = rows[f"NAT rebinding, {kind}"]
            self.recovered(row, pair, self.first_reply_of(pingers[pair], at), at)
            row.detections.append(self.detection(pair, at))

    def loss(self, fraction: float, window_s: float) -> tuple[int, list[str]]:
        """alice's path switches (the most about one peer) in a window of random loss."""
        at = time.time()
        self.lab.add_loss(LOSS_HOST, fraction)
        try:
            time.sleep(window_s)
        finally:
            self.lab.clear_loss(LOSS_HOST)
        per_peer: dict[str, int] = {}
        seen = []
        for record in self.party.events(LOSS_HOST, *PATH_EVENTS):
            if datetime.fromisoformat(record["recorded_at"]).timestamp() - at > window_s:
                continue
            if datetime.fromisoformat(record["recorded_at"]).timestamp() < at:
                continue
            seen.append(f"{record['event_type']}: {record['payload'].get('reason')}")
            if record["event_type"] == "PathSwitched":
                per_peer[record["payload"]["peer_id"]] = per_peer.get(record["payload"]["peer_id"], 0) + 1
        return max(per_peer.values(), default=0), seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="one run of the direct path cut, relay kill, 15 s cut, restarts and rebinding, "
                             "20 s loss windows")
    parser.add_argument("--long", action="store_true", help="also the 5 min uplink cut")
    parser.add_argument("--loss-window", type=float, default=60.0)
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="only the faults whose name contains TEXT ('loss' for the loss windows)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.loss_window = 1, 20.0
    if not 1 <= args.runs <= 20 or not 5 <= args.loss_window <= 600:
        print("--runs must be 1-20 and --loss-window 5-600", file=sys.stderr)
        return 2
    cuts = [15.0] if args.quick else [15.0, 60.0] + ([300.0] if args.long else [])
    faults: list[tuple[str, Callable[[Bench, dict[str, Row]], None]]] = [
        ("direct path cut", Bench.direct_path_cut),
        *([] if args.quick else [("relayed path cut", Bench.relayed_path_cut)]),
        ("relay killed", Bench.relay_killed),
        *[(f"uplink cut {cut:g} s", lambda bench, rows, cut=cut: bench.uplink_cut(rows, cut))
          for cut in cuts],
        ("agent restart", Bench.agent_restart),
        ("control server restart", Bench.control_restart),
        ("NAT rebinding", Bench.nat_rebinding),
    ]
    faults = [(name, run_fault) for name, run_fault in faults if args.only in name]
    loss_levels = LOSS_LEVELS if args.only in "random loss" else ()
    rows: dict[str, Row] = {}
    for name in ("direct path cut", "relayed path cut", "relay killed"):
        rows[name] = Row(name)
    for cut in cuts:
        for kind in ("direct", "relayed"):
            rows[f"uplink cut {cut:g} s, {kind}"] = Row(f"uplink cut {cut:g} s, {kind}")
        # bob-carl carries no game: its cut is seen at its next probe, as any idle tunnel's.
        rows[f"uplink cut {cut:g} s, both ends cut"] = Row(f"uplink cut {cut:g} s, both ends cut",
                                                           detection_expected=False)
    for kind in ("direct", "relayed"):
        rows[f"agent restart, {kind}"] = Row(f"agent restart, {kind}", detection_expected=False)
    rows["control server restart"] = Row("control server restart", detection_expected=False)
    for kind in ("direct", "relayed"):
        rows[f"NAT rebinding, {kind}"] = Row(f"NAT rebinding, {kind}", detection_expected=False)

    print(f"failover bench: {args.runs} runs, serve defaults; alice port-restricted, bob port-forwarded, "
          f"carl symmetric, 2 relays", flush=True)
    misses: list[str] = []
    figures: list[Figure] = []
    load_before = load_average()
    with Lab.build(hosts=HOSTS, relays=2) as lab:
        bench = Bench(lab)
        bench.start()
        print("baseline, join to first reply: " + ", ".join(
            f"{kind} {seconds:.2f} s" if seconds is not None else f"{kind} none"
            for kind, seconds in bench.baseline.items()), flush=True)
        for fault, run_fault in faults:
            for run in range(1, args.runs + 1):
                started = time.monotonic()
                run_fault(bench, rows)
                measured = {name: (row.detections[-1] if row.detections else None,
                                   row.recoveries[-1] if row.recoveries else None)
                            for name, row in rows.items() if name.startswith(fault) and row.recoveries
                            and len(row.recoveries) == run}
                print(f"run {run} {fault}: " + "; ".join(
                    f"{name[len(fault):].lstrip(', ') or 'pair'} detection "
                    + (f"{d:.2f} s" if d is not None else "none")
                    + ", recovery " + (f"{r:.2f} s" if r is not None else "none")
                    for name, (d, r) in measured.items())
                    + f"  ({time.monotonic() - started:.0f} s)", flush=True)
                bench.settle()
        flaps: list[tuple[float, int, list[str]]] = []
        for fraction in loss_levels:
            most, seen = bench.loss(fraction, args.loss_window)
            print(f"{fraction:.0%} loss for {args.loss_window:g} s: at most {most} path switches a peer; "
                  f"transitions {seen}", flush=True)
            flaps.append((fraction, most, seen))
            bench.settle()

    print()
    print(f"{'fault':32} {'detection median / p95 (s)':>28} {'recovery median / p95 (s)':>28}  vs join")
    for row in rows.values():
        if not row.recoveries:
            continue
        kind = "relayed" if "relayed" in row.name or row.name in ("relay killed", "control server restart") \
            else "direct"
        base = bench.baseline.get(kind)
        found = [v for v in row.recoveries if v is not None]
        ratio = f"{statistics.median(found) / base:6.1f}x" if found and base else "     -"
        detection = row._summary(row.detections) if row.detection_expected else \
            row._summary(row.detections) + " (not targeted)"
        note = f"  pings lost per run: {' '.join(row.notes)}" if row.notes else ""
        print(f"{row.name:32} {detection:>28} {row._summary(row.recoveries):>28}  {ratio}{note}")
        row_misses = row.misses()
        misses += row_misses
        detected = [v for v in row.detections if v is not None]
        figures.append(Figure(
            f"{row.name}: detection, median of {len(row.detections)}",
            statistics.median(detected) if detected else None, "s", None, "",
            f"≤ {DETECTION_TARGET_S:g} s" if row.detection_expected else "",
            not any(": detection" in m for m in row_misses) if row.detection_expected else None))
        figures.append(Figure(
            f"{row.name}: recovery, median of {len(row.recoveries)}",
            statistics.median(found) if found else None, "s", base, f"join → first reply, {kind}",
            f"≤ {RECOVERY_TARGET_S:g} s", not any(": recovery" in m for m in row_misses)))
    for fraction, most, _ in flaps:
        allowed = 0 if fraction < 0.5 else max(1, math.floor(args.loss_window / 60.0))
        print(f"{fraction:.0%} loss, {args.loss_window:g} s: {most} path switches (most for one peer), "
              f"target <= {allowed}")
        if most > allowed:
            misses.append(f"{fraction:.0%} loss: {most} path switches > {allowed}")
        figures.append(Figure(f"{fraction:.0%} loss for {args.loss_window:g} s: path switches (most a peer)",
                              most, "", None, "", f"≤ {allowed}", most <= allowed, 0))
    print()
    print("MISSED: " + "; ".join(misses) if misses else "every target met")
    emit("failover", figures, load_before)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
