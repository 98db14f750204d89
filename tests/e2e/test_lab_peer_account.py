"""The other side's own account of a drop, in a real lab party: ``diagnose`` on alice names
bob's uplink and bob's crash from what bob's node told her when their connection came back.

alice and bob hold public addresses; no relay, so a drop is a drop. The agents probe every
second (``probe-interval`` in their config file). The party stays quiet for over a minute
before the uplink cut and before the crash, so both nodes are past their busy first minute;
longer quiet periods only add a sign of life (``NodeAlive``) a quiet minute, which the actor
tests cover on a virtual clock. Real ``serve`` agents on wireguard-go in network namespaces;
the lab tears itself down, processes included, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab
from tests.e2e.test_lab import every_pair_pings, form_party
from tests.e2e.test_lab_forensic_causes import events, wait_until
from tests.e2e.test_lab_forensics import diagnosis, wait_all_connected

pytestmark = pytest.mark.lab
PROBE_INTERVAL_S = 1
HOSTS = ("alice", "bob")
QUIET_S = 65.0  # past the first minute
CUT_S = 20.0
CRASH_DOWN_S = 10.0


@pytest.fixture(scope="module")
def party() -> Iterator[LabParty]:
    if os.geteuid() != 0:
        pytest.fail("lab tests must run as root (they build network namespaces)")
    hosts = [HostSpec("alice", "open"), HostSpec("bob", "open")]
    with Lab.build(hosts=hosts, relays=0) as lab:
        lab_party = LabParty(lab)
        for host in HOSTS:
            state = Path(lab_party.state(host))
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
            (state / "lanrage.toml").write_text(f"[serve]\nprobe-interval = {PROBE_INTERVAL_S}\n")
        lab_party.start_services()
        lab_party.start_agents(list(HOSTS))
        _, ips = form_party(lab_party, "alice", ["bob"])
        assert every_pair_pings(lab_party, ips, 60) == set()
        wait_all_connected(lab_party, list(HOSTS), 60)
        lab_party.ips = ips  # type: ignore[attr-defined]
        yield lab_party


def accounts(party: LabParty, kind: str) -> list[dict[str, Any]]:
    return [row for row in events(party, "alice", "PeerAccountReceived") if row["payload"]["kind"] == kind]


def latest_drop(party: LabParty, after: float) -> dict[str, Any] | None:
    drops = [i for i in diagnosis(party, "alice", "bob")["incidents"]
             if i["kind"] == "drop" and datetime.fromisoformat(i["at"]).timestamp() >= after]
    return drops[-1] if drops else None


def diagnose_at(party: LabParty, at: str) -> dict[str, Any]:
    out = party.cli("alice", "diagnose", "bob", "--at", at, "--json", "--state-dir", party.state("alice"))
    found = json.loads(out)["incidents"]
    assert len(found) == 1, found
    return dict(found[0])


def check_named(party: LabParty, fault_at: float, drop: dict[str, Any], cause: str, words: str) -> None:
    # The drop itself, by its exact time: bob's word comes first.
    exact = diagnose_at(party, drop["at"])
    assert (exact["global_position"], exact["cause"]) == (drop["global_position"], cause), \
        json.dumps(exact, indent=1)
    assert exact["findings"][0]["summary"].startswith(f"bob's node says {words}"), exact
    assert exact["findings"][0]["evidence"][0]["detail"].startswith("bob's own word (received ")
    # As a person asks it: the minute of the fault.
    minute = datetime.fromtimestamp(fault_at).astimezone().strftime("%H:%M")
    asked = diagnose_at(party, minute)
    assert (asked["global_position"], asked["cause"]) == (drop["global_position"], cause), \
        json.dumps(asked, indent=1)


def test_bobs_uplink_is_named_from_bobs_own_account(party: LabParty) -> None:
    time.sleep(QUIET_S)
    cut_at = time.time()
    party.lab.cut_uplink("bob")
    try:
        drop = wait_until(lambda: latest_drop(party, cut_at), 30, "drop of bob on alice")
        time.sleep(CUT_S)
    finally:
        party.lab.restore_uplink("bob")
    back_at = time.time()
    told = wait_until(lambda: accounts(party, "uplink_down"), 60, "bob's account of his uplink on alice")
    said = told[-1]["payload"]
    began = datetime.fromisoformat(said["started_at"]).timestamp()
    ended = datetime.fromisoformat(said["ended_at"]).timestamp()
    # Bob's node saw its own outage: from its first sign (its drop, its control server's
    # silence) to its return, within the seconds its detection takes.
    assert cut_at - 1 <= began <= cut_at + 10, (cut_at, said)
    assert back_at - 1 <= ended <= back_at + 30, (back_at, said)
    check_named(party, cut_at, drop, "remote_uplink_down", "its uplink was down ")


def test_bobs_crash_is_named_from_bobs_own_account(party: LabParty) -> None:
    """Bob's machine dies: its agent is killed and it is off the network (its wireguard-go, which
    outlives the agent by design, would otherwise go on answering alice's probes) until the
    agent starts again."""
    wait_all_connected(party, list(HOSTS), 90)
    time.sleep(QUIET_S)
    crashed_at = time.time()
    party.kill_agent("bob", signal.SIGKILL)
    party.lab.cut_uplink("bob")
    try:
        drop = wait_until(lambda: latest_drop(party, crashed_at), 30, "drop of bob on alice")
        time.sleep(CRASH_DOWN_S)
    finally:
        party.lab.restore_uplink("bob")
    party.start_agent("bob")
    told = wait_until(lambda: accounts(party, "crashed"), 90, "bob's account of his crash on alice")
    said = told[-1]["payload"]
    last_alive = datetime.fromisoformat(said["started_at"]).timestamp()
    # Bob's last sign of life: within a minute before the kill (a NodeAlive, or a later row).
    assert crashed_at - 61 <= last_alive <= crashed_at, (crashed_at, said)
    check_named(party, crashed_at, drop, "remote_crashed", "it crashed or was killed: last alive ")
