"""`serve --games ssdp,mdns` (set in lanrage.toml): across a symmetric NAT, so over a relay, an
SSDP M-SEARCH and an mDNS query sent by plain sockets find a responder on another member,
exactly once each; the per-port counters show in `status` and enter the log."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
TOOL = [sys.executable, str(Path(__file__).with_name("discovery.py"))]
PORTS = {"ssdp": ("239.255.255.250", 1900), "mdns": ("224.0.0.251", 5353)}
PEERS_REFRESH_S = 10  # the agents give the emulator its peers within a second or two of a join


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_ssdp_and_mdns_find_a_responder_across_a_relay_exactly_once() -> None:
    hosts = [HostSpec("alice", "port_restricted"), HostSpec("bob", "symmetric")]
    with Lab.build(hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        for host in ("alice", "bob"):
            Path(party.state(host)).mkdir(mode=0o700, parents=True, exist_ok=True)
            (Path(party.state(host)) / "lanrage.toml").write_text('[serve]\ngames = "ssdp,mdns"\n')
        party.start_agents(["alice", "bob"])
        created = party.create("alice", "LAN")
        ips = {"alice": created["virtual_ip"], "bob": party.join("bob", created["invite"])["virtual_ip"]}
        assert party.wait_ping("alice", ips["bob"], 30) is not None
        assert party.wait_ping("bob", ips["alice"], 30) is not None
        assert party.peers("alice")["bob"]["path"] == "relay"

        for kind in ("ssdp", "mdns"):
            deadline = time.monotonic() + PEERS_REFRESH_S
            while True:
                responder = lab.popen("bob", [*TOOL, "respond", kind, "bob-game", "4", ips["bob"]])
                lab.wait_udp_listening("bob", PORTS[kind][1])
                asked = lab.run("alice", [*TOOL, "query", kind, "bob-game", "2.5"], timeout=30).stdout
                assert responder.wait(timeout=10) == 0
                queries, answers = _lines(responder.output()), _lines(asked)
                if queries or time.monotonic() > deadline:
                    break
            # bob's responder heard alice's query once, from alice's virtual IP; alice heard one answer.
            assert len(queries) == 1, (kind, queries)
            assert queries[0]["src"] == ips["alice"]
            assert len(answers) == 1, (kind, answers)
            assert answers[0]["src"] == ips["bob"] and answers[0]["sport"] == PORTS[kind][1]
            if kind == "ssdp":
                assert answers[0]["answer"].startswith("uuid:bob-game::")
            else:
                assert answers[0]["answer"] == "bob-game.local" and answers[0]["address"] == ips["bob"]
                assert answers[0]["id_matches"] and answers[0]["response"]

        # The per-port counters: in status now, and in the log once the agents stop.
        sent = {(row["destination"], row["port"]): row
                for row in party.status("alice")["agent"]["broadcast"]["by_port"]}
        heard = {(row["destination"], row["port"]): row
                 for row in party.status("bob")["agent"]["broadcast"]["by_port"]}
        for group_port in PORTS.values():
            assert sent[group_port]["forwarded"] >= 1 and heard[group_port]["reemitted"] >= 1
        table = party.cli("bob", "status", "--state-dir", party.state("bob"))
        assert "game discovery: 224.0.0.251:5353, 239.255.255.250:1900 (running)" in table
        for host in ("alice", "bob"):
            party.kill_agent(host, signal.SIGTERM)
        rows = _lines(party.cli("bob", "sql", "--json", "--state-dir", party.state("bob"),
                                    "SELECT json_extract(payload, '$.destination') AS destination, "
                                    "json_extract(payload, '$.port') AS port, "
                                    "sum(json_extract(payload, '$.reemitted')) AS reemitted "
                                    "FROM events WHERE event_type = 'BroadcastCountersSampled' "
                                    "GROUP BY 1, 2 ORDER BY 2"))
        logged = {(row["destination"], row["port"]): row["reemitted"] for row in rows}
        assert logged[PORTS["ssdp"]] >= 1 and logged[PORTS["mdns"]] >= 1
