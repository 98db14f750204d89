"""`serve --broadcast-ports` (set in the state directory's lanrage.toml): a party formed with
the CLI carries a game's discovery broadcast, and the reply comes back, over a relayed tunnel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
GAME = [sys.executable, str(Path(__file__).with_name("game.py"))]
PORT = 4445


def test_a_party_of_agents_carries_broadcasts_both_ways_over_a_relay() -> None:
    """A port-restricted and a symmetric NAT cannot go direct (docs/architecture.md): this pair runs over
    a relay. (Direct tunnels are test_lab_broadcast's; the relayed-or-direct choice is below
    the tunnel, so a direct variant here only cost 15 s more; it passed too.)"""
    hosts = [HostSpec("alice", "port_restricted"), HostSpec("bob", "symmetric")]
    with Lab.build(hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        for host in ("alice", "bob"):
            Path(party.state(host)).mkdir(mode=0o700, parents=True, exist_ok=True)
            (Path(party.state(host)) / "lanrage.toml").write_text(f'[serve]\nbroadcast-ports = "{PORT}"\n')
        party.start_agents(["alice", "bob"])
        created = party.create("alice", "LAN")
        ips = {"alice": created["virtual_ip"], "bob": party.join("bob", created["invite"])["virtual_ip"]}
        assert party.wait_ping("alice", ips["bob"], 30) is not None
        assert party.wait_ping("bob", ips["alice"], 30) is not None
        for sender, receiver in (("alice", "bob"), ("bob", "alice")):
            listener = lab.popen(receiver, [*GAME, "listen", str(PORT), "1.5", "--reply"])
            lab.wait_udp_listening(receiver, PORT)
            out = lab.run(sender, [*GAME, "send", "255.255.255.255", str(PORT), "3", sender, "1.0",
                                   "--sport", "40000"], timeout=30).stdout
            assert listener.wait(timeout=10) == 0
            heard = [json.loads(x) for x in listener.output().splitlines() if x.startswith("{")]
            counters = {host: party.status(host)["agent"]["broadcast"]["counters"] for host in ips}
            # Every broadcast, the first one included: no retry hides a miss.
            assert sorted(m["data"] for m in heard) == [f"{sender} {i}" for i in range(3)], counters
            assert {(m["src"], m["sport"]) for m in heard} == {(ips[sender], 40000)}
            replies = [json.loads(x) for x in out.splitlines()]
            assert sorted(m["data"] for m in replies if m["src"] == ips[receiver]) == \
                [f"REPLY {sender} {i}" for i in range(3)], counters
        paths = {p["name"]: p["path"] for p in party.status("alice")["parties"][0]["peers"]}
        assert paths["bob"] == "relay"
