"""A STUN server down when the agents start, and random loss on a router: 5 and 20 % (no
path switch) and 50 % (degraded, at most one switch a connection a minute), each in a lab
of alice (port-restricted cone), bob (port-forwarded), carl (symmetric) and two relays:
the STUN test in its own, the loss windows in the fault files' (alice-bob and bob-carl
direct, alice-carl relayed).

The lab's loss is iptables ``-m statistic --mode random`` (the kernel's generator, not
seeded); everything the test chooses itself is fixed.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator

import pytest

from actors.config import ConnectionConfig
from lab import LabError, LabProcess
from tests.faults.harness import HOSTS, RECOVERY_S, FaultParty, story

pytestmark = pytest.mark.lab

# Long enough for the checks the loss feeds: a connection's loss window decides only on at
# least half its probes (10 of 20 at one probe every 5 s: 50 s), so a shorter window could
# not show a flapping path; one more probe interval for the last probe's answer. At 50 % it
# also holds a direct retry (30 s) after a switch (bench/failover.py: 60 s).
_DEFAULTS = ConnectionConfig()
WINDOW_S = (_DEFAULTS.loss_window_probes / 2 + 1) * _DEFAULTS.probe_interval_s
LOSS_WINDOW_S = {0.05: WINDOW_S, 0.20: WINDOW_S, 0.50: WINDOW_S}
LOSS_HOST = "alice"  # her router drops; she has a direct (bob) and a relayed (carl) peer
SWITCHES_A_MINUTE = {0.05: 0, 0.20: 0, 0.50: 1}  # path switches per connection and minute of window
# During the window alice's game pings both peers (each ping crosses her router twice: at
# 50 % each way a quarter are answered). Degraded, not dead: some replies in every stretch.
PING_INTERVAL_S = 0.5
REPLY_GAP_S = 15.0  # at 50 %, 30 pings without a reply: 2e-4 by chance


@pytest.fixture
def stun_down() -> Iterator[FaultParty]:
    """A lab of its own: the loss windows start from a party formed with STUN up (after the
    agents' restart at the end of this test, pairs stayed on the relay for minutes)."""
    with FaultParty.build(HOSTS, relays=2, stun_down=True) as built:
        built.form()
        yield built


# The paths the pairs settle on; a loss window starts once every end is on its pair's path,
# or after PATHS_WITHIN_S (a pair still relayed then upgrades to direct at a later direct
# retry, both ends at their own; that upgrade is not counted as a flap).
PATHS = {("alice", "bob"): "direct", ("bob", "carl"): "direct", ("alice", "carl"): "relay"}
PATHS_WITHIN_S = 40.0  # a direct retry (30 s) and its punch
UPGRADES = ("direct path works again", "hole punch succeeded")
UP = ("connected", "degraded")


def on_their_paths(faults: FaultParty) -> bool:
    for (one, other), path in PATHS.items():
        for host, peer in ((one, other), (other, one)):
            row = faults.party.peers(host).get(peer)
            if row is None or (row["state"], row["path"]) != ("connected", path):
                return False
    return True


@pytest.fixture
def faults(shared: FaultParty) -> FaultParty:
    """The fault files' lab (tests/faults/conftest.py), whole and on its paths."""
    shared.heal()
    deadline = time.monotonic() + PATHS_WITHIN_S
    while not on_their_paths(shared) and time.monotonic() < deadline:
        time.sleep(0.5)
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


def test_a_stun_server_down_when_the_agents_start(stun_down: FaultParty) -> None:
    """With STUN down every agent records that it could not test its NAT, and the party
    still forms (over the relays); once STUN is back, restarted agents find their public
    address (the pairs that can go direct upgrade on the next direct retry, not tested)."""
    faults = stun_down
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


def start_pinging(faults: FaultParty, window_s: float) -> dict[str, LabProcess]:
    """alice pings each peer every ``PING_INTERVAL_S`` for the window (a game's chatter)."""
    return {peer: faults.lab.popen(LOSS_HOST, [
        "ping", "-n", "-D", "-i", str(PING_INTERVAL_S), "-W", "1", "-w", str(math.ceil(window_s)),
        faults.ips[peer]]) for peer in faults.names if peer != LOSS_HOST}


def reply_times(faults: FaultParty, pinger: LabProcess) -> list[float]:
    """The wall-clock times of the pinger's echo replies (it is stopped first)."""
    if pinger.alive:
        faults.lab.kill(pinger, signal.SIGINT)
    return [float(line[1:line.index("]")]) for line in pinger.output().splitlines()
            if line.startswith("[") and " bytes from " in line]


def states(faults: FaultParty) -> dict[str, str]:
    """Each connection's state now, as ``host->peer``."""
    return {f"{host}->{peer}": row["state"] for host in faults.names
            for peer, row in faults.party.peers(host).items() if peer != host}


def paths(faults: FaultParty) -> dict[str, str]:
    """Each connection's path now, as ``host->peer``."""
    return {f"{host}->{peer}": row["path"] for host in faults.names
            for peer, row in faults.party.peers(host).items() if peer != host}


def switches_per_connection(faults: FaultParty, started: float,
                            before: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Every host's path switches about each peer since ``started``, and what each recorded.
    A connection on the relay at the start (``before``) that should be direct: its upgrade,
    as its first switch, is not counted."""
    counted: dict[str, int] = {}
    seen: list[str] = []
    for host in faults.names:
        names = {row["peer_id"]: name for name, row in faults.party.peers(host).items()}
        upgraded: set[str] = set()
        for record in faults.transitions(host, started):
            payload = record["payload"]
            connection = f"{host}->{names.get(payload['peer_id'], payload['peer_id'])}"
            seen.append(f"{connection} {record['event_type']}: {payload.get('reason')}")
            if record["event_type"] != "PathSwitched":
                continue
            first = connection not in counted and connection not in upgraded
            if first and before.get(connection) == "relay" and payload.get("to_path") == "direct" \
                    and payload.get("reason") in UPGRADES:
                upgraded.add(connection)
                continue
            counted[connection] = counted.get(connection, 0) + 1
    return counted, seen


@pytest.mark.parametrize("loss", [0.05, 0.20, 0.50])
def test_random_loss_on_a_router(faults: FaultParty, loss: float) -> None:
    """Loss on alice's uplink for a window while she pings her peers: no path switch and
    no state change at 5 % and 20 %; at 50 % at most one switch per connection and minute
    (on either end), and the pings still answered now and then (degraded, not dead);
    every pair pings within 5 s once it stops."""
    lab, window_s = faults.lab, LOSS_WINDOW_S[loss]
    before = paths(faults)
    started = time.time()
    lab.add_loss(LOSS_HOST, loss)
    pingers = start_pinging(faults, window_s)
    try:
        time.sleep(window_s)
    finally:
        lab.clear_loss(LOSS_HOST)
    cleared = time.monotonic()
    replies = {peer: reply_times(faults, pinger) for peer, pinger in pingers.items()}
    faults.assert_mesh(RECOVERY_S, since=cleared, what=f"after {loss:.0%} loss")
    # Pinging is not enough: no connection still reconnecting once the loss is over.
    remaining = max(0.0, cleared + RECOVERY_S - time.monotonic())
    try:
        lab.wait_for(lambda: all(state in UP for state in states(faults).values()), remaining,
                     interval_s=0.5, what="every connection up")
    except LabError:
        raise AssertionError(f"{loss:.0%} loss: not every connection up {RECOVERY_S:g} s after it stopped: "
                             f"{states(faults)}\n{story(faults, started - 60)}") from None
    switches, seen = switches_per_connection(faults, started, before)
    changes = [line for line in seen if "ConnectionStateChanged" in line]
    gaps = {peer: max(b - a for a, b in zip([started, *times], [*times, started + window_s], strict=True))
            for peer, times in replies.items()}
    print(f"\n{loss:.0%} loss for {window_s:g} s from {before}: "
          f"replies {({p: len(t) for p, t in replies.items()})}, "
          f"longest gaps {({p: round(g, 1) for p, g in gaps.items()})}, switches {switches}: {seen}")
    if seen:
        print(story(faults, started - 60))
    allowed = SWITCHES_A_MINUTE[loss] * max(1, math.floor(window_s / 60.0))
    assert all(count <= allowed for count in switches.values()), \
        f"{loss:.0%} loss: path switches {switches} (at most {allowed} a connection): {seen}"
    if SWITCHES_A_MINUTE[loss] == 0:
        assert not changes, f"{loss:.0%} loss: state changes {changes}"
    assert all(gap <= REPLY_GAP_S for gap in gaps.values()), \
        f"{loss:.0%} loss: no ping reply for {gaps} s (at most {REPLY_GAP_S:g})"
    faults.assert_healthy()
