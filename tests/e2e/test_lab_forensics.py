"""Forensics of a real lab party: the dashboard in headless Chromium, and ``diagnose`` of real drops.

Real ``serve`` agents on wireguard-go in network namespaces (the lab tears itself down,
processes included, even when a test fails). The browser runs inside alice's namespace,
where her API listens on loopback.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab
from tests.e2e.test_lab import every_pair_pings, form_party

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
# Three lost probes (5 s apart), a failover to the relay and three more lost there: well under this.
DROP_SEEN_S = 150.0


@pytest.fixture
def party(require_root: None) -> Iterator[LabParty]:
    hosts = [HostSpec("alice", "open"), HostSpec("bob", "port_forwarded"), HostSpec("carl", "open")]
    with Lab.build(hosts=hosts, relays=2) as lab:
        lab_party = LabParty(lab)
        lab_party.start_services()
        lab_party.start_agents([h.name for h in hosts])
        _, ips = form_party(lab_party, "alice", ["bob", "carl"])
        assert every_pair_pings(lab_party, ips, 60) == set()
        wait_all_connected(lab_party, list(ips), 60)
        lab_party.ips = ips  # type: ignore[attr-defined]
        yield lab_party


def wait_all_connected(party: LabParty, hosts: list[str], timeout_s: float) -> None:
    """Every node has recorded every connection as up: a fault now interrupts a live connection."""
    deadline = time.monotonic() + timeout_s
    states: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        states = {host: {name: p["state"] for name, p in party.peers(host).items() if name != host}
                  for host in hosts}
        if all(set(s.values()) == {"connected"} and len(s) == len(hosts) - 1 for s in states.values()):
            return
        time.sleep(1)
    raise AssertionError(f"not every connection came up in {timeout_s} s: {states}")


def diagnosis(party: LabParty, host: str, peer: str) -> dict[str, Any]:
    return dict(json.loads(party.cli(host, "diagnose", peer, "--json", "--state-dir", party.state(host))))


def wait_for_incident(party: LabParty, host: str, peer: str, kind: str) -> dict[str, Any]:
    deadline = time.monotonic() + DROP_SEEN_S
    while time.monotonic() < deadline:
        found = [i for i in diagnosis(party, host, peer)["incidents"] if i["kind"] == kind]
        if found:
            return found[-1]
        time.sleep(3)
    raise AssertionError(f"no {kind} of {peer} in {host}'s log after {DROP_SEEN_S} s: "
                         f"{party.cli(host, 'history', peer, '--state-dir', party.state(host))}")


def browse(party: LabParty, host: str, screenshot: Path) -> dict[str, Any]:
    """What headless Chromium in ``host``'s namespace sees on its dashboard (see browser_check.py)."""
    link = party.cli(host, "dashboard", "--state-dir", party.state(host)).strip()  # a one-time link
    done = party.lab.run(host, [sys.executable, str(ROOT / "tests" / "e2e" / "browser_check.py"),
                                link, str(screenshot)], timeout=120, cwd=ROOT)
    return dict(json.loads(done.stdout))


def test_dashboard_shows_peers_chart_and_a_clicked_event(party: LabParty, tmp_path: Path) -> None:
    screenshot = tmp_path / "dashboard.png"
    seen = browse(party, "alice", screenshot)
    assert seen["page_errors"] == [] and seen["error_banner"] == ""
    rows = {row[0]: row for row in seen["peers"]}
    assert set(rows) == {"alice (this node)", "bob", "carl"}
    assert rows["bob"][2] == "connected" and rows["carl"][2] == "connected"
    assert rows["bob"][5].endswith(" ms") and rows["carl"][3] == "direct"
    charts = {chart["peer"]: chart for chart in seen["charts"]}
    assert set(charts) == {"bob", "carl"} and all(c["points"] >= 1 and c["line"] for c in charts.values())
    assert seen["clicked"][1] in ("bob", "carl")
    assert f"{seen['clicked'][1]} after ConnectionStateChanged" in seen["detail"]
    assert "Every connection right after this event (replayed from the log)" in seen["detail"]
    assert screenshot.stat().st_size > 10_000


def test_diagnose_names_a_cut_uplink_a_leaver_a_crash_and_a_stop(party: LabParty, tmp_path: Path) -> None:
    ips: dict[str, str] = party.ips  # type: ignore[attr-defined]
    party.lab.cut_uplink("bob")
    drop = wait_for_incident(party, "alice", "bob", "drop")
    assert drop["cause"] == "remote_unreachable", drop
    summary = drop["findings"][0]["summary"]
    assert summary.startswith("bob's node became unreachable (its uplink or its machine)")
    assert "other connections stayed up (carl)" in summary
    # The dashboard: a click on the drop shows the same finding.
    seen = browse(party, "alice", tmp_path / "drop.png")
    assert seen["page_errors"] == [] and seen["clicked"][1:3] == ["bob", "connected → connecting"], seen
    assert "Cause: bob's node became unreachable (its uplink or its machine)" in seen["detail"]
    # Bob's side, once both of his connections have dropped: they dropped together.
    wait_for_incident(party, "bob", "carl", "drop")
    own = wait_for_incident(party, "bob", "alice", "drop")
    assert own["cause"] == "local_uplink", json.dumps(own, indent=1)
    party.lab.restore_uplink("bob")

    party.leave("carl")
    left = wait_for_incident(party, "alice", "carl", "drop")
    assert (left["cause"], left["findings"][0]["summary"]) == ("remote_left", "carl left the party")
    left_here = wait_for_incident(party, "carl", "alice", "drop")
    assert left_here["cause"] == "local_left", left_here

    # Bob's own side: his node is killed (its wireguard-go keeps the tunnel) while connected to alice.
    assert every_pair_pings(party, {k: v for k, v in ips.items() if k != "carl"}, 90) == set()
    wait_all_connected(party, ["alice", "bob"], 120)
    party.kill_agent("bob", signal.SIGKILL)
    party.start_agent("bob")
    restart = wait_for_incident(party, "bob", "alice", "restart")
    assert restart["cause"] == "local_crashed", restart
    text = party.cli("bob", "diagnose", "alice", "--state-dir", party.state("bob"))
    assert "cause: this node crashed or was killed" in text

    # And a clean stop (SIGTERM) and start: the connection stays up in the log across it.
    wait_all_connected(party, ["alice", "bob"], 120)
    party.kill_agent("bob", signal.SIGTERM)
    party.start_agent("bob")
    deadline = time.monotonic() + DROP_SEEN_S
    restarts: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(restarts) < 2:
        restarts = [i for i in diagnosis(party, "bob", "alice")["incidents"] if i["kind"] == "restart"]
        time.sleep(2)
    assert [i["cause"] for i in restarts] == ["local_crashed", "local_stopped"], restarts
    assert restarts[-1]["findings"][0]["summary"] == ("this node was stopped (actor system shut down) and "
                                                      "started again")
