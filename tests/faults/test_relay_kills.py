"""kill -9 of the relay carrying the relayed pair, twenty times, in one lab: alice
(port-restricted cone), bob (port-forwarded) and carl (symmetric NAT), two relays.
alice-bob and bob-carl are direct, alice-carl is relayed.

Traffic flows between alice and carl during each kill (a game does not pause for the
relay): alice's pings to carl go unanswered for at most ``RECOVERY_S`` after a kill, and
``RELAY_FAILOVER_S`` or less over the kills (the median); the killed relay is started again
(and is the spare for the next kill). Nothing is orphaned and no other service exited.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time

import pytest

from tests.faults.harness import RECOVERY_S, Failures, FaultParty

pytestmark = pytest.mark.lab

KILLS = 20
SEED = 12  # the moments of the kills: fixed, so a failure can be replayed
# The relay monitor sees a dead relay within a second (and a connection whose relayed path
# went silent asks it to look at once): traffic is back through the other relay within 2 s
# (a median, as the failover targets are; lab runs of 20 kills: medians 0.93-1.03 s,
# 1.55 s at most).
RELAY_FAILOVER_S = 2.0


def reply_times(output: str) -> list[float]:
    """The wall-clock times of ``ping -D``'s echo replies."""
    return [float(line[1:line.index("]")]) for line in output.splitlines()
            if line.startswith("[") and " bytes from " in line]


def test_kill_9_of_a_relay(faults: FaultParty) -> None:
    party = faults.party
    failures = Failures(faults)
    rng = random.Random(SEED)
    gaps: list[float] = []
    for kill in range(1, KILLS + 1):
        if failures.exhausted:
            break
        active = party.peers("alice")["carl"]["relay"]
        assert active in party.relay_processes, f"kill {kill}: alice-carl is not relayed ({active})"
        pinger = faults.lab.popen("alice", ["ping", "-n", "-D", "-i", "0.1", "-W", "1", "-w", "30",
                                            faults.ips["carl"]])
        time.sleep(rng.uniform(1.0, 2.0))
        killed_at = time.time()
        party.kill_hard(party.relay_processes[active])
        with failures.round(f"kill {kill} (relay {active})"):
            faults.assert_mesh(RECOVERY_S, involving=["carl"], what="after the relay died")
            time.sleep(0.5)
            faults.lab.kill(pinger)
            replies = reply_times(pinger.output())
            outage = max((later - earlier for earlier, later in itertools.pairwise(replies)
                          if later > killed_at), default=None)
            assert outage is not None, "no reply from carl to alice's pings after the kill"
            gaps.append(outage)
            assert outage <= RECOVERY_S, f"alice's pings to carl went unanswered for {outage:.2f} s"
        if pinger.alive:
            faults.lab.kill(pinger)
        party.start_relay(active)
    if gaps:
        print(f"\nrelay kills: traffic back after {statistics.median(gaps):.2f} s median, "
              f"{max(gaps):.2f} s at most ({len(gaps)} kills)")
    faults.assert_mesh(RECOVERY_S, what="after the relays' restarts")
    faults.assert_healthy()
    failures.check()
    assert len(gaps) == KILLS and statistics.median(gaps) <= RELAY_FAILOVER_S, \
        f"traffic back after {sorted(round(gap, 2) for gap in gaps)} s"
