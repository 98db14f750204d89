"""Time from `party join` to the first ping reply across the tunnel, direct and relayed.

    python bench/connect.py [--runs 5]        (as root; builds its own lab)

For each run a fresh party is created on the first peer and joined from the second
with the CLI; the clock starts when `party join` is invoked and stops at the first
echo reply to the host's virtual IP (pings every 50 ms, each waiting up to 200 ms).
Pairs: port-restricted cone x port-forwarded (direct), port-restricted cone x
symmetric (relayed), and port-restricted cone x port-restricted cone (upgraded: on the
relay first, then direct once the punch works). Prints every run, then the median and
p95 of each pair.

Baseline, in the same run and after each join: the same ping loop from the guest to the
relay's address, the underlying path with no tunnel (the hosts' routers drop unsolicited
pings, the relay answers them; a relayed tunnel crosses this very path): the cost of the
measurement itself, a `ping` process and one round trip. Targets:
every run replies, and the medians of direct < 1 s, relayed and upgraded < 2 s. Exits 1
on a miss.
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

from bench.result import Figure, emit, load_average
from demo.party import LabParty
from lab import HostSpec, Lab

PAIRS = (("direct", "alice", "bob"), ("relayed", "alice", "carl"), ("upgraded", "alice", "dana"))
TARGET_S = {"direct": 1.0, "relayed": 2.0, "upgraded": 2.0}  # median, `party join` to the first reply


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


def underlying_reply(party: LabParty, guest: str) -> float | None:
    """The baseline: the same ping loop to the relay's address, on the path under the tunnel."""
    started = time.monotonic()
    replied = first_reply(party, guest, party.lab.relays[0].public_ip, 10)
    return None if replied is None else replied - started


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
    load_before = load_average()
    results: dict[str, list[float]] = {kind: [] for kind, _, _ in PAIRS}
    baselines: dict[str, list[float]] = {kind: [] for kind, _, _ in PAIRS}
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
                underlying = underlying_reply(party, guest)
                if underlying is not None:
                    baselines[kind].append(underlying)
    figures, missed = [], bool(any(failures.values()))
    for kind, values in results.items():
        baseline = statistics.median(baselines[kind]) if baselines[kind] else None
        under = f"; the same ping on the underlying path {baseline:.3f} s" if baseline is not None else ""
        if values:
            median = statistics.median(values)
            met = median < TARGET_S[kind] and not failures[kind]
            print(f"{kind:8}: median {median:.3f} s, p95 {p95(values):.3f} s, "
                  f"{len(values)} runs, {failures[kind]} without a reply{under}")
        else:
            median, met = None, False
            print(f"{kind:8}: no run got a reply ({failures[kind]} runs){under}")
        missed |= not met
        figures.append(Figure(f"`party join` → first ping, {kind}, median", median, "s", baseline,
                              "first ping on the underlying path",
                              f"< {TARGET_S[kind]:g} s, every run replies", met, 3))
    print("targets: every run replies; medians direct < 1 s, relayed and upgraded < 2 s: "
          + ("missed" if missed else "met"))
    emit("connect", figures, load_before)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
