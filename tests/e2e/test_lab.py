"""End to end on real WireGuard through real NATs, in the network lab, via the CLI only.

Each test builds its own lab (root; namespaces and interface names carry a random
run id) and tears it down even when it fails.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Iterator

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab

pytestmark = pytest.mark.lab


@pytest.fixture
def three(require_root: None) -> Iterator[LabParty]:
    hosts = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
             HostSpec("carl", "symmetric")]
    with Lab.build(hosts=hosts, relays=2) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents([h.name for h in hosts])
        yield party


def form_party(party: LabParty, host: str, guests: list[str]) -> tuple[str, dict[str, str]]:
    created = party.create(host, "LAN")
    ips = {host: created["virtual_ip"]}
    for guest in guests:
        ips[guest] = party.join(guest, created["invite"])["virtual_ip"]
    return created["party_id"], ips


def every_pair_pings(party: LabParty, ips: dict[str, str], timeout_s: float) -> set[tuple[str, str]]:
    """The pairs still not answering after ``timeout_s`` (empty: every pair pings)."""
    pending = set(itertools.permutations(ips, 2))
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for a, b in sorted(pending):
            if party.ping(a, ips[b], count=1, timeout_s=1.0):
                pending.discard((a, b))
    return pending


def test_three_then_eight_peers_every_pair_pings_and_a_leaver_is_removed(require_root: None) -> None:
    hosts = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
             HostSpec("carl", "symmetric"), HostSpec("dave", "open"), HostSpec("erin", "port_restricted"),
             HostSpec("fred", "symmetric"), HostSpec("gina", "port_forwarded"), HostSpec("hank", "open")]
    with Lab.build(hosts=hosts, relays=2) as lab:
        party = LabParty(lab)
        party.start_services()
        names = [h.name for h in hosts]
        party.start_agents(names[:3])
        created = party.create("alice", "LAN")
        ips = {"alice": created["virtual_ip"]}
        for guest in names[1:3]:
            ips[guest] = party.join(guest, created["invite"])["virtual_ip"]
        assert every_pair_pings(party, ips, 60) == set()
        paths = {p["name"]: p["path"] for p in party.status("alice")["parties"][0]["peers"]}
        assert (paths["bob"], paths["carl"]) == ("direct", "relay")
        party.start_agents(names[3:])
        for guest in names[3:]:
            ips[guest] = party.join(guest, created["invite"])["virtual_ip"]
        assert len(set(ips.values())) == 8
        assert every_pair_pings(party, ips, 120) == set()

        party.leave("erin")
        deadline = time.monotonic() + 30
        for name in names:
            if name == "erin":
                continue
            while "erin" in party.peers(name) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert "erin" not in party.peers(name), name
            events = party.cli(name, "events", "--type", "PeerLeft", "--json", "--state-dir",
                               party.state(name))
            assert any(json.loads(line)["payload"]["reason"] == "left" for line in events.splitlines())
        assert party.status("erin")["parties"] == []
        wg = lab.run("alice", ["wg", "show", lab.host("alice").wg_name, "peers"]).stdout.split()
        assert len(wg) == 6  # the other six remaining peers; erin's WireGuard peer is gone


def test_kill_9_and_restart_restore_the_party_and_the_tunnels(three: LabParty) -> None:
    party = three
    party_id, ips = form_party(party, "alice", ["bob", "carl"])
    assert every_pair_pings(party, ips, 60) == set()
    party.kill_agent("bob", signal.SIGKILL)
    party.start_agent("bob")
    assert every_pair_pings(party, {k: ips[k] for k in ("alice", "bob")}, 60) == set()
    peers = party.peers("bob")
    assert {name: p["virtual_ip"] for name, p in peers.items()} == ips
    replayed = json.loads(party.cli("bob", "replay", "--at", "now", "--json", "--state-dir",
                                    party.state("bob")))
    members = dict(next(p for p in replayed["parties"].values() if p["party_id"] == party_id)["members"])
    assert {m["name"]: m["virtual_ip"] for m in members.values()} == ips


def test_sigterm_removes_the_interface_and_records_the_stop(three: LabParty) -> None:
    party = three
    form_party(party, "alice", ["bob"])
    party.kill_agent("bob", signal.SIGTERM)
    links = party.lab.run("bob", ["ip", "-br", "link"]).stdout
    assert party.lab.host("bob").wg_name not in links
    events = party.cli("bob", "events", "--type", "NodeStopped", "--json", "--state-dir", party.state("bob"))
    assert events.strip()


def test_tunnels_survive_the_control_server_going_down_and_coming_back(three: LabParty) -> None:
    party = three
    _, ips = form_party(party, "alice", ["bob", "carl"])
    assert every_pair_pings(party, ips, 60) == set()
    party.stop_control()
    time.sleep(3)
    assert every_pair_pings(party, ips, 20) == set()  # the data plane does not need the control plane
    party.start_control()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
            party.status(h)["agent"]["control"][0]["connected"] for h in ips):
        time.sleep(0.5)
    assert all(party.status(h)["agent"]["control"][0]["connected"] for h in ips)
