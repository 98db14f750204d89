"""Uplink cuts of 15 s and 60 s, in one lab: alice (port-restricted cone), bob
(port-forwarded), carl (symmetric), two relays; alice-bob and bob-carl are direct and
alice-carl is relayed. bob's and carl's uplinks are cut at once while alice plays (a game's
chatter: 20 packets a second to each): she notices each within 3 s, the two in 2 s as a
median, and every pair pings within 5 s of the uplinks' return.

During the 15 s cut she plays on; during the 60 s one her game gives up on them after 10 s
(as games drop a silent player), so the tunnels are idle when the uplinks return and each
end's retries alone must bring the pairs back. A 60 s cut outlives every retry's first
rounds: when the uplinks return, each end reconnects on its own, its punch finds the peer
not punching (the peer is back on the old path already), and the pair must stay on the
path that answers rather than move to a relay session only one end holds (that kept pairs
apart for 11 to 16 s in the lab); two ends that punch and configure the endpoints they had
at the same moment, on a WireGuard session the cut outlived, must not wait out WireGuard's
handshake retries (14 s once). An idle tunnel is not watched that closely by design
(one probe a probe interval): a cut there is noticed at its next probe, or as soon as
traffic starts on it.
"""

from __future__ import annotations

import signal
import statistics
import time
from datetime import datetime

import pytest

from lab import LabProcess
from tests.faults.harness import RECOVERY_S, FaultParty, story

pytestmark = pytest.mark.lab

DETECTION_S = 2.0  # failover's bound: a median (bench/failover.py), here over the peers cut
# Any one peer: the bound plus what a loaded machine adds (a check's probes and the agent's
# threads wait for the CPU; measured up to 2.0 s with other labs running).
DETECTION_ONE_S = 3.0
PLAYER, CUT = "alice", ("bob", "carl")
GAME_INTERVAL_S = 0.05  # 20 packets a second each way, answered: a game's chatter
WARM_UP_S = 2.0  # the chatter flows before the cut, so the counters are read as busy


def game_traffic(faults: FaultParty, play_s: float) -> list[LabProcess]:
    """Pings from the player to each peer that is cut, for ``play_s`` (``-w``: they end on their own)."""
    limit = int(play_s)
    return [faults.lab.popen(PLAYER, ["ping", "-n", "-q", "-i", str(GAME_INTERVAL_S), "-W", "1",
                                      "-w", str(limit), faults.ips[peer]]) for peer in CUT]


@pytest.mark.parametrize(("outage_s", "played_s"), [(15, 15 + RECOVERY_S), (60, 10)])
def test_an_uplink_cut(faults: FaultParty, outage_s: int, played_s: float) -> None:
    """``played_s``: how long alice's game goes on sending after the cut."""
    lab = faults.lab
    players = game_traffic(faults, WARM_UP_S + played_s)
    try:
        time.sleep(WARM_UP_S)
        cut_at = time.time()
        for name in CUT:
            lab.cut_uplink(name)
        time.sleep(outage_s)
        for name in CUT:
            lab.restore_uplink(name)
        restored = time.monotonic()
        try:
            faults.assert_mesh(RECOVERY_S, since=restored, what=f"after a {outage_s} s cut")
            print(f"\n{outage_s} s cut: every pair answered a ping {time.monotonic() - restored:.1f} s after "
                  f"the uplinks returned (bound {RECOVERY_S:g} s)")
        except AssertionError:
            print(story(faults, cut_at))
            raise
        finally:
            detection = first_transitions(faults, PLAYER, CUT, cut_at)
            print(f"\n{outage_s} s cut: {PLAYER}'s first transition for " + ", ".join(
                f"{peer} after {found[0]:.2f} s ({found[1]})" if found else f"{peer}: none"
                for peer, found in detection.items()))
    finally:
        for player in players:
            if player.alive:
                lab.kill(player, signal.SIGINT)
    late = {peer: found for peer, found in detection.items() if found is None or found[0] > DETECTION_ONE_S}
    assert not late, f"{PLAYER} noticed the cut later than {DETECTION_ONE_S:g} s (or never): {late}"
    median = statistics.median(found[0] for found in detection.values() if found is not None)
    assert median <= DETECTION_S, f"{PLAYER} noticed the cut in {median:.2f} s (median): {detection}"
    faults.assert_healthy()


def first_transitions(faults: FaultParty, host: str, peers: tuple[str, ...],
                      after: float) -> dict[str, tuple[float, str] | None]:
    """Seconds from ``after`` (wall clock) to ``host``'s first transition for each peer,
    with its reason."""
    ids = {faults.peer_id(host, peer): peer for peer in peers}
    found: dict[str, tuple[float, str] | None] = dict.fromkeys(peers)
    for record in faults.transitions(host, after):
        peer = ids.get(record["payload"]["peer_id"])
        if peer is not None and found[peer] is None:
            seconds = datetime.fromisoformat(record["recorded_at"]).timestamp() - after
            found[peer] = (seconds, f"{record['event_type']}: {record['payload'].get('reason')}")
    return found

