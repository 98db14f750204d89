"""Control registry replay: linear in the number of parties, or not.

    .venv/bin/python bench/registry.py [--small 1000] [--large 4000] [--repeat 5]

Folds the Control* events of ``--small`` and of ``--large`` parties (one registration
and two admissions each: what a restart of the control server replays) with
``mesh.control.registry.fold``, ``--repeat`` times each, alternating, and prints the
median CPU time of each size and their ratio against the ratio of sizes. A linear
fold costs about (large / small) times more; the old fold, which copied every party
on every event, cost about the square of that (1,000 parties 0.06 s, 4,000 parties
1.74 s: 29x). Target: the time ratio is at most 1.5x the size ratio; exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.result import Figure, emit, load_average
from events import types as ev
from mesh.control import registry as reg

SLACK = 1.5  # allowed excess over a linear ratio: caches and allocator noise on a shared machine


def party_events(count: int) -> list[ev.Event]:
    events: list[ev.Event] = []
    for index in range(count):
        party = f"p{index:08x}"
        events.append(ev.ControlPartyRegistered(party_id=party, name="LAN", host_peer_id=f"h{index}",
                                                secret_hash="sha256$00$00", subnet=reg.DEFAULT_SUBNET))
        for member in range(2):
            events.append(ev.ControlMemberAdmitted(party_id=party, peer_id=f"m{index}-{member}",
                                                   public_key="K" * 43 + "=",
                                                   virtual_ip=f"10.66.0.{member + 1}", name="n"))
    return events


def cpu_seconds(events: list[ev.Event]) -> float:
    start = time.process_time()
    registry = reg.fold(events)
    elapsed = time.process_time() - start
    assert len(registry) == len(events) // 3
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load_before = load_average()
    small, large = party_events(args.small), party_events(args.large)
    times: dict[str, list[float]] = {"small": [], "large": []}
    for round_ in range(args.repeat):
        order = ("small", "large") if round_ % 2 == 0 else ("large", "small")
        for name in order:
            times[name].append(cpu_seconds(small if name == "small" else large))
    small_s, large_s = statistics.median(times["small"]), statistics.median(times["large"])
    size_ratio = args.large / args.small
    time_ratio = large_s / small_s if small_s > 0 else float("inf")
    print(f"registry replay, median CPU of {args.repeat}: {args.small} parties {small_s * 1000:.1f} ms, "
          f"{args.large} parties {large_s * 1000:.1f} ms")
    print(f"time ratio {time_ratio:.2f}x for a size ratio of {size_ratio:.1f}x "
          f"(target <= {SLACK * size_ratio:.1f}x)")
    emit("registry", [Figure(f"control registry replay, {args.large:,} parties, CPU", large_s * 1000, "ms",
                             small_s * 1000, f"{args.small:,} parties",
                             f"≤ {SLACK * size_ratio:g}x the baseline ({SLACK:g}x linear)",
                             time_ratio <= SLACK * size_ratio, 1)], load_before)
    if time_ratio > SLACK * size_ratio:
        print("MISSED: registry replay is not linear in the number of parties", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
