"""A STUN server down when the agents start and random loss of 5 and 20 % on a router
(no path switch), in one lab: alice (port-restricted cone), bob (port-forwarded), carl
(symmetric), two relays. With STUN up, alice-bob and
bob-carl are direct and alice-carl is relayed.

The lab's loss is iptables ``-m statistic --mode random`` (the kernel's generator, not
seeded); everything the test chooses itself is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.faults.harness import HOSTS, RECOVERY_S, FaultParty, story

pytestmark = pytest.mark.lab

LOSS_WINDOW_S = 12.0  # two probe intervals and more at the default 5 s; bench/failover.py uses 60 s
LOSS_HOST = "alice"  # her router drops; she has a direct (bob) and a relayed (carl) peer
FLAPS_ALLOWED = {0.05: 0, 0.20: 0}  # path switches per peer in the window
UPGRADE = "direct path works again"  # the relayed pair's retry of the direct path succeeded


@pytest.fixture(scope="module")
def shared() -> Iterator[FaultParty]:
    with FaultParty.build(HOSTS, relays=2, stun_down=True) as built:
        built.form()
        yield built


@pytest.fixture
def faults(shared: FaultParty) -> FaultParty:
    if not shared.stun_up:
        bring_stun_back(shared)
    shared.heal()
    return shared


def bring_stun_back(faults: FaultParty) -> float:
    """STUN is started and every agent restarted (kill -9) so that it tests its NAT again;
    returns when their APIs were up (monotonic)."""
    faults.lab.start_stun()
    faults.stun_up = True
    for name in faults.names:
        faults.party.kill_hard(faults.party.agents[name])
        faults.party.start_agent(name, wait=False)
    for name in faults.names:
        faults.lab.wait_tcp_listening(name, 8666, 60)
    return time.monotonic()


def test_a_stun_server_down_when_the_agents_start(shared: FaultParty) -> None:
    """With STUN down every agent records that it could not test its NAT, and the party
    still forms (over the relays); once STUN is back, restarted agents find their public
    address (the pairs that can go direct upgrade on the next direct retry, not tested)."""
    faults = shared
    for name in faults.names:
        failed = faults.party.events(name, "NatDetectionFailed")
        assert failed, f"{name} recorded no NatDetectionFailed although STUN was down"
    faults.assert_healthy()

    up = bring_stun_back(faults)
    faults.assert_mesh(RECOVERY_S, since=up, what="STUN back, agents restarted")
    for name in faults.names:
        assert faults.party.events(name, "NatDetected"), f"{name}: no NatDetected once STUN was back"
    for name in faults.names:
        detected = faults.party.events(name, "NatDetected")[-1]["payload"]
        assert detected["public_ip"] == faults.lab.host(name).public_ip, f"{name}: {detected}"
    faults.assert_healthy(restarted=faults.names)


@pytest.mark.parametrize("loss", [0.05, 0.20])
def test_random_loss_on_a_router(faults: FaultParty, loss: float) -> None:
    """Loss on alice's uplink for a window: no path switch and no state change at 5 % and
    20 %; every pair pings within 5 s once it stops (50 %: bench/failover.py)."""
    lab = faults.lab
    started = time.time()
    lab.add_loss(LOSS_HOST, loss)
    try:
        time.sleep(LOSS_WINDOW_S)
    finally:
        lab.clear_loss(LOSS_HOST)
    cleared = time.monotonic()
    records = faults.transitions(LOSS_HOST, started)
    faults.assert_mesh(RECOVERY_S, since=cleared, what=f"after {loss:.0%} loss")
    switches: dict[str, int] = {}
    changes: dict[str, int] = {}
    for record in records:
        peer = record["payload"]["peer_id"]
        if record["event_type"] == "PathSwitched":
            if record["payload"].get("reason") == UPGRADE:
                continue  # a pair still on the relay after the STUN test, upgrading: not a flap
            switches[peer] = switches.get(peer, 0) + 1
        else:
            changes[peer] = changes.get(peer, 0) + 1
    summary = [(r["event_type"], r["payload"].get("reason")) for r in records]
    print(f"\n{loss:.0%} loss for {LOSS_WINDOW_S:g} s: {summary}")
    if records:
        print(story(faults, started - 60))
    assert all(count <= FLAPS_ALLOWED[loss] for count in switches.values()), \
        f"{loss:.0%} loss: path switches {switches} (at most {FLAPS_ALLOWED[loss]} a peer): {summary}"
    assert not changes, f"{loss:.0%} loss: state changes {summary}"
    faults.assert_healthy()
