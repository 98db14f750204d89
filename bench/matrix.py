"""The NAT matrix through the shipped agent: `party join` to the first ping reply, per NAT pair.

    python bench/matrix.py [--runs 3]        (as root; builds its own lab)

One lab with two hosts behind each NAT type (open, port-forwarded, port-restricted
cone, symmetric), one relay, STUN and a control server, and a `serve` agent with its
default settings on every host (the settings a user gets: relay-first where a punch
may fail, the default punch timeout and direct retry). For each of the ten pairs of
NAT types and each run, the first host creates a party and the second joins it with the
CLI; the clock starts when `party join` is invoked and stops at the first echo reply
from the creator's virtual IP (a ping every 50 ms, each waiting up to 200 ms). STUN
detection is not in the figure: each agent detects its NAT once, at start, before
any party. The path is read from `status` at the first reply and again 5 s later
(a relay-first pair upgrades to direct when its punch works). Prints every run, then
the median and p95 of each pair. Baseline, after each join: the same ping loop from the
guest to the relay's address, the underlying path with no tunnel (`bench/connect.py`).
Target: every run replies, and each pair's median is under 2 s; exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from bench.connect import first_reply, p95, underlying_reply
from bench.result import Figure, emit, load_average
from demo.party import LabParty
from lab import NAT_TYPES, HostSpec, Lab

TARGET_MEDIAN_S = 2.0  # the relayed `party join` target; direct pairs are expected well under it
REPLY_TIMEOUT_S = 30.0
SETTLE_S = 5.0  # long enough for a relay-first pair's punch to succeed and switch to direct


def path_to(party: LabParty, guest: str) -> str:
    parties = party.status(guest)["parties"]
    row = next((p for p in parties[0]["peers"] if not p["is_local"]), None) if parties else None
    return f"{row['state']}/{row['path']}" if row else "-"


def one_run(party: LabParty, host: str, guest: str, tag: str) -> tuple[float | None, str, str]:
    created = party.create(host, tag)
    started = time.monotonic()
    joined = json.loads(party.cli(guest, "party", "join", created["invite"], "--json", "--state-dir",
                                  party.state(guest)))
    replied = first_reply(party, guest, created["virtual_ip"], REPLY_TIMEOUT_S)
    at_reply = path_to(party, guest)
    time.sleep(SETTLE_S)
    settled = path_to(party, guest)
    party.cli(guest, "party", "leave", joined["party_id"], "--state-dir", party.state(guest))
    party.cli(host, "party", "leave", created["party_id"], "--state-dir", party.state(host))
    return (None if replied is None else replied - started), at_reply, settled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.runs <= 20:
        print("--runs must be 1-20", file=sys.stderr)
        return 2
    short = {"open": "op", "port_forwarded": "fw", "port_restricted": "pr", "symmetric": "sy"}
    hosts = [HostSpec(f"{short[nat]}{n}", nat) for nat in NAT_TYPES for n in (1, 2)]
    pairs = list(itertools.combinations_with_replacement(NAT_TYPES, 2))
    results: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    paths: dict[tuple[str, str], set[str]] = {pair: set() for pair in pairs}
    failures = 0
    baselines: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    load_before = load_average()
    with Lab.build(hosts=hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents([h.name for h in hosts])
        for run in range(1, args.runs + 1):
            for a, b in pairs:
                host, guest = f"{short[a]}1", f"{short[b]}2"
                seconds, at_reply, settled = one_run(party, host, guest, f"matrix-{a}-{b}-{run}")
                took = f"{seconds:.3f} s" if seconds is not None else f"no reply in {REPLY_TIMEOUT_S:.0f} s"
                print(f"run {run} {a} x {b}: {took} (at the reply {at_reply}, "
                      f"{SETTLE_S:.0f} s later {settled})", flush=True)
                paths[(a, b)].add(settled)
                if seconds is None:
                    failures += 1
                else:
                    results[(a, b)].append(seconds)
                underlying = underlying_reply(party, guest)
                if underlying is not None:
                    baselines[(a, b)].append(underlying)
    print(f"\n{'pair':36}{'median':>9}{'p95':>9}  path {SETTLE_S:.0f} s after the first reply")
    missed = failures > 0
    figures = []
    for (a, b), values in results.items():
        label = f"{a} x {b}"
        baseline = statistics.median(baselines[(a, b)]) if baselines[(a, b)] else None
        if not values:
            print(f"{label:36}{'-':>9}{'-':>9}  no reply")
            missed = True
            figures.append(Figure(f"{a} x {b}, join → first ping, median", None, "s", baseline,
                                  "first ping on the underlying path", f"< {TARGET_MEDIAN_S:g} s", False, 3))
            continue
        median = statistics.median(values)
        missed |= median >= TARGET_MEDIAN_S
        figures.append(Figure(f"{a} x {b}, join → first ping, median ({', '.join(sorted(paths[(a, b)]))})",
                              median, "s", baseline, "first ping on the underlying path",
                              f"< {TARGET_MEDIAN_S:g} s, every run replies",
                              median < TARGET_MEDIAN_S and len(values) == args.runs, 3))
        print(f"{label:36}{median:8.3f}s{p95(values):8.3f}s  {', '.join(sorted(paths[(a, b)]))}")
    print(f"target: every run replies and every median < {TARGET_MEDIAN_S:.0f} s: "
          f"{'missed' if missed else 'met'} ({failures} runs without a reply)")
    emit("matrix", figures, load_before)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
