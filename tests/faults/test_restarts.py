"""kill -9 of the control server and of a relay, twenty times each, in one lab: alice
(port-restricted cone), bob (port-forwarded) and carl (symmetric NAT), two relays.
alice-bob and bob-carl are direct, alice-carl is relayed.

After each kill the killed process is started again as an operator (or systemd) would;
then every pair pings within ``RECOVERY_S``, nothing is orphaned and no other service
exited.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lab import HostSpec
from tests.faults.harness import FORM_TIMEOUT_S, RECOVERY_S, Failures, FaultParty

pytestmark = pytest.mark.lab

KILLS = 20
# No figure is promised for the control sessions' return: an agent's session retries
# with backoff capped at 10 s (+20 % jitter, mesh/control Backoff), so after twenty kills
# in a row the next try may be 12 s away.
CONTROL_SESSION_S = 15.0
HOSTS = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
         HostSpec("carl", "symmetric")]


@pytest.fixture(scope="module")
def shared() -> Iterator[FaultParty]:
    with FaultParty.build(HOSTS, relays=2) as built:
        built.form()
        yield built


@pytest.fixture
def faults(shared: FaultParty) -> FaultParty:
    shared.heal()
    return shared


def test_kill_9_of_the_control_server(faults: FaultParty) -> None:
    """While the control server is dead the tunnels stay up; once it is back every agent's
    control session is connected again, and the party still takes a member back in."""
    party = faults.party
    for kill in range(1, KILLS + 1):
        assert party.control is not None
        party.kill_hard(party.control)
        lost = faults.unreachable(faults.pairs(), 0.0)
        assert not lost, f"kill {kill}: with the control server down, no reply across {lost}"
        party.start_control()
    faults.lab.wait_for(lambda: all(session["connected"] for host in faults.names
                                    for session in party.status(host)["agent"]["control"]),
                        CONTROL_SESSION_S, what="every agent's control session connected again")
    faults.assert_mesh(RECOVERY_S, what="after the control server's restarts")
    faults.assert_healthy()

    # The restarted control server still holds the party: carl leaves and joins again.
    party.leave("carl")
    faults.lab.wait_for(lambda: "carl" not in party.peers("alice"), 10, what="carl gone from alice's party")
    faults.ips["carl"] = party.join("carl", faults.invite)["virtual_ip"]
    faults.assert_mesh(FORM_TIMEOUT_S, involving=["carl"], what="carl joined again")


def test_kill_9_of_a_relay(faults: FaultParty) -> None:
    """The relay carrying alice-carl is killed; the pair pings through the other relay
    within 5 s; the killed one is started again (and is the spare for the next kill)."""
    party = faults.party
    failures = Failures(faults)
    for kill in range(1, KILLS + 1):
        if failures.exhausted:
            break
        active = party.peers("alice")["carl"]["relay"]
        assert active in party.relay_processes, f"kill {kill}: alice-carl is not relayed ({active})"
        party.kill_hard(party.relay_processes[active])
        killed_at = time.monotonic()
        party.start_relay(active)
        with failures.round(f"kill {kill} (relay {active})"):
            faults.assert_mesh(RECOVERY_S, involving=["carl"], since=killed_at, what="after the relay died")
    faults.assert_mesh(RECOVERY_S, what="after the relays' restarts")
    faults.assert_healthy()
    failures.check()
