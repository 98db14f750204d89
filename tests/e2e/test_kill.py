"""SIGKILL `serve` mid-party twenty times: every restart replays to the same state, records
the abrupt end, and makes no WireGuard change the log does not call for."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab

pytestmark = pytest.mark.lab

KILLS = 20
SEED = 9  # the moments of the kills: fixed, so a failure can be replayed


def wireguard_requests(state: str) -> int:
    """How many WireGuard changes bob's log has asked for (requests, not outcomes)."""
    with sqlite3.connect(f"file:{Path(state) / 'lanrage.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT COUNT(*) FROM events WHERE event_type IN "
                          "('WireGuardPeerConfigRequested', 'WireGuardPeerRemovalRequested')").fetchone()[0]


def abrupt_ends(state: str) -> int:
    with sqlite3.connect(f"file:{Path(state) / 'lanrage.db'}?mode=ro", uri=True, timeout=5) as db:
        query = "SELECT COUNT(*) FROM events WHERE event_type = 'NodeRunEndedAbruptly'"
        return db.execute(query).fetchone()[0]


LIVE = """
import json, sys, urllib.request
token = open(sys.argv[1] + "/api-token").read().strip()
request = urllib.request.Request("http://127.0.0.1:8666/api/actors",
                                 headers={"Authorization": "Bearer " + token})
print(urllib.request.urlopen(request, timeout=10).read().decode())
"""


def live_connections(party: LabParty, host: str) -> dict[str, tuple[str, str, str]]:
    """What the connection actors hold now (GET /api/actors), not the log's projection."""
    answer = party.lab.run(host, [sys.executable, "-c", LIVE, party.state(host)], timeout=20).stdout
    connections = json.loads(answer)["connections"]
    return {c["peer_id"]: (c["state"], c["path"], c["endpoint"]) for c in connections
            if c["state"] not in ("closed", None)}


def replayed_connections(party: LabParty, host: str) -> dict[str, tuple[str, str, str]]:
    world = json.loads(party.cli(host, "replay", "--at", "now", "--json", "--state-dir", party.state(host)))
    return {c["peer_id"]: (c["state"], c["path"], c["endpoint"]) for c in world["connections"].values()
            if c["state"] not in ("closed", None)}


def test_twenty_kills_replay_to_the_same_state_without_repeating_wireguard_changes(
        require_root: None) -> None:
    rng = random.Random(SEED)
    hosts = [HostSpec("alice", "open"), HostSpec("bob", "port_forwarded")]
    with Lab.build(hosts=hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents(["alice", "bob"])
        invite = party.create("alice", "LAN")["invite"]
        party.join("bob", invite)
        alice_ip = next(p["virtual_ip"] for p in party.status("bob")["parties"][0]["peers"]
                        if p["name"] == "alice")
        assert party.wait_ping("bob", alice_ip, 30) is not None
        lab.wait_for(lambda: [v[:2] for v in live_connections(party, "bob").values()]
                     == [("connected", "direct")], 30, what="bob connected directly")
        state = party.state("bob")
        for kill in range(1, KILLS + 1):
            time.sleep(rng.uniform(0.0, 1.5))  # a random moment after its API is up
            requests = wireguard_requests(state)
            party.kill_agent("bob", signal.SIGKILL)
            party.start_agent("bob")
            assert abrupt_ends(state) == kill
            lab.wait_for(lambda: live_connections(party, "bob") == replayed_connections(party, "bob"),
                         20, what=f"bob's live state equal to its replay after kill {kill}")
            assert wireguard_requests(state) == requests, f"kill {kill}: a WireGuard change was redone"
        assert party.wait_ping("bob", alice_ip, 20) is not None
        assert live_connections(party, "bob") == replayed_connections(party, "bob")
