"""kill -9 of ``serve`` and of the control server, twenty times or more each, in one lab:
alice (port-restricted cone), bob (port-forwarded) and carl (symmetric NAT), two relays.
alice-bob and bob-carl are direct, alice-carl is relayed.

Every other round of agent kills takes the agent's whole unit, as systemd does after a crash
(``KillMode=mixed``: wireguard-go too); the others only ``serve`` (a ``kill -9`` by hand,
which leaves its wireguard-go to be adopted). After each kill the killed process is started
again as an operator (or systemd) would;
then every pair pings within ``RECOVERY_S`` of the restarted process being up, the
restarted agents replay to their live state, nothing is orphaned and no other service
exited.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.faults.harness import FORM_TIMEOUT_S, RECOVERY_S, Failures, FaultParty

pytestmark = pytest.mark.lab

KILLS = 20
SEED = 12  # the victims and moments of the kills: fixed, so a failure can be replayed
# An agent's control session retries with backoff capped at 2 s (+50 % jitter,
# mesh/control Backoff): it is connected again within 3 s of the server being up.
CONTROL_SESSION_S = 5.0


def test_kill_9_of_serve(faults: FaultParty) -> None:
    """Rounds of one, two or three agents killed at once (a random moment, a fixed seed),
    carl (the relayed side) in most of them; the pairs are back within 5 s of the restarted
    agents' API being up."""
    rng = random.Random(SEED)
    party = faults.party
    failures = Failures(faults)
    kills = rounds = 0
    while kills < KILLS and not failures.exhausted:
        victims = rng.choice([["carl"], ["carl"], ["alice"], ["alice", "carl"], faults.names])
        time.sleep(rng.uniform(0.0, 1.0))
        rounds += 1
        kill = party.kill_unit if rounds % 2 == 0 else party.kill_hard
        for victim in victims:
            kill(party.agents[victim])
        kills += len(victims)
        for victim in victims:
            party.start_agent(victim, wait=False)
        for victim in victims:
            faults.lab.wait_tcp_listening(victim, 8666, 60)
        up = time.monotonic()
        how = "with wireguard-go" if kill == party.kill_unit else "serve alone"
        with failures.round(f"kills {kills - len(victims) + 1}-{kills} ({', '.join(victims)}, {how})"):
            faults.assert_mesh(RECOVERY_S, involving=victims, since=up, what="after the restart")
            faults.assert_healthy(restarted=victims)
    failures.check()


def test_kill_9_of_the_control_server(faults: FaultParty) -> None:
    """While the control server is dead the tunnels stay up; once it is back every agent's
    control session is connected again within 5 s, and the party still takes a member back in."""
    party = faults.party
    rng = random.Random(SEED)
    for kill in range(1, KILLS + 1):
        assert party.control is not None
        party.kill_hard(party.control)
        lost = faults.unreachable(faults.pairs(), 0.0)
        assert not lost, f"kill {kill}: with the control server down, no reply across {lost}"
        time.sleep(rng.uniform(0.0, 1.0))
        party.start_control()
    up = time.monotonic()
    faults.lab.wait_for(lambda: all(session["connected"] for host in faults.names
                                    for session in party.status(host)["agent"]["control"]),
                        CONTROL_SESSION_S, what="every agent's control session connected again")
    print(f"\ncontrol sessions back {time.monotonic() - up:.1f} s after the control server's 20th start")
    faults.assert_mesh(RECOVERY_S, what="after the control server's restarts")
    faults.assert_healthy()

    # The restarted control server still holds the party: carl leaves and joins again.
    party.leave("carl")
    faults.lab.wait_for(lambda: "carl" not in party.peers("alice"), 10, what="carl gone from alice's party")
    joined = time.monotonic()
    faults.ips["carl"] = party.join("carl", faults.invite)["virtual_ip"]
    faults.assert_mesh(FORM_TIMEOUT_S, involving=["carl"], since=joined, what="carl joined again")
    rejoin_s = time.monotonic() - joined
    print(f"carl's rejoin: every pair pings {rejoin_s:.1f} s after the join began")
    assert rejoin_s <= 2 * RECOVERY_S, f"carl's rejoin took {rejoin_s:.1f} s"
