"""Time from `party join` to the first ping reply across the tunnel, direct and relayed.

    python bench/connect.py [--runs 5]        (as root; builds its own lab)

For each run a fresh party is created on the first peer and joined from the second
with the CLI; the clock starts when `party join` is invoked and stops at the first
echo reply to the host's virtual IP (pings every 50 ms, each waiting up to 200 ms).
Pairs: port-restricted cone x port-forwarded (direct), port-restricted cone x
symmetric (relayed), and port-restricted cone x port-restricted cone (upgraded: on the
relay first, then direct once the punch works). Prints every run, then the median and
p95 of each pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

from demo.party import LabParty
from lab import HostSpec, Lab

PAIRS = (("direct", "alice", "bob"), ("relayed", "alice", "carl"), ("upgraded", "alice", "dana"))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]


def first_reply(party: LabParty, host: str, ip: str, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = party.lab.run(host, ["ping", "-n", "-c", "1", "-W", "0.2", ip], check=False, timeout=5)
        if done.returncode == 0:
            return time.monotonic()
        time.sleep(0.05)
    return None


def one_run(party: LabParty, kind: str, host: str, guest: str, run: int) -> tuple[float | None, str]:
    created = party.create(host, f"bench-{kind}-{run}")
    started = time.monotonic()
    joined = json.loads(party.cli(guest, "party", "join", created["invite"], "--json", "--state-dir",
                                  party.state(guest)))
    replied = first_reply(party, guest, created["virtual_ip"], 30)
    row = next(p for p in party.status(guest)["parties"][0]["peers"] if not p["is_local"])
    party.cli(guest, "party", "leave", joined["party_id"], "--state-dir", party.state(guest))
    party.cli(host, "party", "leave", created["party_id"], "--state-dir", party.state(host))
    return (None if replied is None else replied - started), f"{row['state']} via {row['path']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.runs <= 50:
        print("--runs must be 1-50", file=sys.stderr)
        return 2
    hosts = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
             HostSpec("carl", "symmetric"), HostSpec("dana", "port_restricted")]
    results: dict[str, list[float]] = {kind: [] for kind, _, _ in PAIRS}
    failures: dict[str, int] = {kind: 0 for kind, _, _ in PAIRS}
    with Lab.build(hosts=hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents([h.name for h in hosts])
        for run in range(1, args.runs + 1):
            for kind, host, guest in PAIRS:
                seconds, how = one_run(party, kind, host, guest, run)
                print(f"run {run} {kind:8} {host}->{guest}: "
                      + (f"{seconds:.3f} s ({how})" if seconds is not None else f"no reply in 30 s ({how})"),
                      flush=True)
                if seconds is None:
                    failures[kind] += 1
                else:
                    results[kind].append(seconds)
    for kind, values in results.items():
        if values:
            print(f"{kind:8}: median {statistics.median(values):.3f} s, p95 {p95(values):.3f} s, "
                  f"{len(values)} runs, {failures[kind]} without a reply")
        else:
            print(f"{kind:8}: no run got a reply ({failures[kind]} runs)")
    return 0 if not any(failures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
