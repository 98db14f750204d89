"""Relay failover through the product: real ``serve`` agents, their relay monitors and actors.

Two symmetric NATs (relay only), two relays. Nothing in the test decides anything: it
kills the active relay's process and watches pings across the virtual IPs resume, then
reads the switch from the stored events with ``history --json``.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from actors.config import ConnectionConfig
from demo.party import RELAY_PORT, LabParty
from lab import HostSpec, Lab, LabProcess

pytestmark = pytest.mark.lab

LIMIT_S = 3.0
# The control server gives both ends of a pair the first session's relay for 30 s
# (mesh/control RELAY_AFFINITY_S); a switch asked for earlier gets the old relay back.
AFFINITY_S = 30.0
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)")


@pytest.fixture
def lab(require_root: None) -> Iterator[Lab]:
    with Lab.build(hosts=[HostSpec("alice", "symmetric"), HostSpec("bob", "symmetric")], relays=2) as built:
        yield built


def start_relay(party: LabParty, index: int) -> LabProcess:
    host = party.lab.relays[index]
    process = party.lab.popen(host.name, [sys.executable, "cli.py", "relay-server", "--listen",
                                          f"0.0.0.0:{RELAY_PORT}", "--public", party.relays[index],
                                          "--secret-file", str(party.secret_file), "--state-dir",
                                          party.state(host.name)])
    party.lab.wait_udp_listening(host.name, RELAY_PORT, 20)
    return process


def node_relay(party: LabParty, host: str) -> str | None:
    node = party.status(host)["node"]
    return node["relay"] if node else None


def since(record: dict[str, Any], moment: float) -> float:
    return datetime.fromisoformat(record["recorded_at"]).timestamp() - moment


def replies(output: str) -> list[float]:
    return [float(match.group(1)) for line in output.splitlines() if (match := _REPLY.match(line))]


def test_killing_the_active_relay_moves_the_pair_to_the_other_within_3_s(lab: Lab) -> None:
    """The two nodes' monitors disagree (alice selected relay 1, bob relay 2): the pair sits
    on the relay of whoever asked first, and both ends must leave it when it dies — one
    because its selected relay died, the other because a relay it did not select did."""
    party = LabParty(lab)
    processes = {relay: start_relay(party, index) for index, relay in enumerate(party.relays)}
    party.start_control()
    party.start_agents(["alice", "bob"])
    first, second = party.relays
    lab.block_path("alice", lab.relays[1].name)
    lab.block_path("bob", lab.relays[0].name)
    lab.wait_for(lambda: (node_relay(party, "alice"), node_relay(party, "bob")) == (first, second), 20,
                 what="alice on relay 1, bob on relay 2")
    lab.unblock_path("alice", lab.relays[1].name)
    lab.unblock_path("bob", lab.relays[0].name)

    created = party.create("alice", "LAN")
    bob_ip = party.join("bob", created["invite"])["virtual_ip"]
    assert party.wait_ping("alice", bob_ip, 30) is not None
    relayed_at = time.monotonic()  # the pair's relay session was issued before this
    active = party.peers("alice")["bob"]["relay"]
    assert party.peers("alice")["bob"]["path"] == party.peers("bob")["alice"]["path"] == "relay"
    assert party.peers("bob")["alice"]["relay"] == active
    other = second if active == first else first
    time.sleep(max(0.0, relayed_at + AFFINITY_S + 1 - time.monotonic()))
    # Both relays healthy all along: no monitor switched back (hysteresis).
    assert (node_relay(party, "alice"), node_relay(party, "bob")) == (first, second)

    pinger = lab.popen("alice", ["ping", "-n", "-D", "-O", "-i", "0.05", "-W", "1", "-w", "8", bob_ip])
    time.sleep(2)
    lab.kill(processes[active], signal.SIGKILL)
    killed_at = time.time()
    pinger.wait(15)
    stamps = replies(pinger.output())
    before = [t for t in stamps if t <= killed_at]
    after = [t for t in stamps if t > killed_at]
    assert before and after, pinger.output()[-2000:]
    outage = after[0] - killed_at
    print(f"\nrelay {active} killed: first reply through {other} after {outage:.2f} s "
          f"(gap between replies {after[0] - before[-1]:.2f} s; {len(after)} replies after)")
    assert outage < LIMIT_S
    assert after[-1] - after[0] > 3  # and they keep coming

    for host, peer in (("alice", "bob"), ("bob", "alice")):
        assert node_relay(party, host) == other
        peer_id = party.peers(host)[peer]["peer_id"]
        lines = party.cli(host, "history", peer_id, "--json", "--state-dir", party.state(host))
        records = [json.loads(line) for line in lines.splitlines()]
        # The move is a switch when the monitor saw the death first, or a reconnect onto the
        # other relay when the connection's own watch saw the tunnel go silent first.
        switches = [r for r in records if r["event_type"] == "PathSwitched"]
        drops = [r for r in records if r["event_type"] == "ConnectionStateChanged"
                 and r["payload"]["from_state"] == "connected"]
        assert [(s["payload"]["from_relay"], s["payload"]["to_relay"]) for s in switches] in (
            [(active, other)], []), lines
        assert switches or drops, lines
        assert party.peers(host)[peer]["relay"] == other
        report = json.loads(party.cli(host, "diagnose", peer, "--json", "--state-dir", party.state(host)))
        moved = [i for i in report["incidents"] if i["kind"] in ("path_switch", "drop")]
        assert moved and all(i["cause"] == "relay_died" for i in moved), json.dumps(moved, indent=1)
        selected = [json.loads(line) for line in party.cli(
            host, "events", "--type", "RelaySelected", "--json", "--state-dir",
            party.state(host)).splitlines()]
        moved_at = since((switches or drops)[0], killed_at)
        print(f"{host} (selected {first if host == 'alice' else second}): last RelaySelected "
              f"{since(selected[-1], killed_at):+.2f} s, moved {moved_at:+.2f} s from the kill")


def start_agents(party: LabParty, hosts: list[str], *extra: str) -> None:
    """``LabParty.start_agents`` with extra ``serve`` flags."""
    for host in hosts:
        node = party.lab.host(host)
        args = [sys.executable, "cli.py", "serve", "--name", host, "--control", party.control_url,
                "--interface", node.wg_name, "--listen-port", "51820", "--state-dir", party.state(host),
                *extra]
        for relay in party.relays:
            args += ["--relay", relay]
        for stun in party.stun:
            args += ["--stun", stun]
        party.agents[host] = party.lab.popen(host, args)
    for host in hosts:
        party.lab.wait_tcp_listening(host, 8666, 60)


def path_to(party: LabParty, host: str, peer: str) -> str | None:
    return party.peers(host).get(peer, {}).get("path")


def test_blocked_direct_path_falls_back_to_the_relay_and_upgrades_back(require_root: None) -> None:
    """Port-restricted x port-restricted: direct, then relayed while blocked, direct again after."""
    hosts = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_restricted")]
    with Lab.build(hosts=hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        # Fast probes and retries so the test is short (defaults: 5 s and 30 s).
        start_agents(party, ["alice", "bob"], "--probe-interval", "0.5", "--direct-retry", "2")
        created = party.create("alice", "LAN")
        bob_ip = party.join("bob", created["invite"])["virtual_ip"]
        assert party.wait_ping("alice", bob_ip, 30) is not None
        lab.wait_for(lambda: path_to(party, "alice", "bob") == "direct" == path_to(party, "bob", "alice"),
                     20, what="the direct path")
        lab.wait_for(lambda: party.peers("alice")["bob"]["state"] == "connected"
                     == party.peers("bob")["alice"]["state"], 20, what="both ends connected")

        lab.block_path("alice", "bob")
        blocked_at = time.monotonic()
        lab.wait_for(lambda: path_to(party, "alice", "bob") == "relay" == path_to(party, "bob", "alice"),
                     30, what="the relay fallback")
        assert party.wait_ping("alice", bob_ip, 10) is not None
        fallback_s = time.monotonic() - blocked_at
        time.sleep(3)  # a direct retry or more while blocked: it must fail and stay on the relay
        assert path_to(party, "alice", "bob") == "relay"

        lab.unblock_path("alice", "bob")
        unblocked_at = time.monotonic()
        # A fallback the loss window saw first is a switch for quality: the way back waits out
        # ``min_switch_interval_s`` (no flapping) before the retries may take it.
        lab.wait_for(lambda: path_to(party, "alice", "bob") == "direct" == path_to(party, "bob", "alice"),
                     ConnectionConfig().min_switch_interval_s + 30, what="the upgrade back to direct")
        assert party.wait_ping("alice", bob_ip, 10) is not None
        upgrade_s = time.monotonic() - unblocked_at
        print(f"\nblocked: relayed and pinging after {fallback_s:.2f} s (probe every 0.5 s, 3 lost); "
              f"unblocked: direct and pinging after {upgrade_s:.2f} s (retry every 2 s)")

        peer_id = party.peers("alice")["bob"]["peer_id"]
        lines = party.cli("alice", "history", peer_id, "--json", "--state-dir", party.state("alice"))
        records = [json.loads(line) for line in lines.splitlines()]
        switches = [(r["payload"]["from_path"], r["payload"]["to_path"]) for r in records
                    if r["event_type"] == "PathSwitched"]
        assert switches[-2:] == [("direct", "relay"), ("relay", "direct")], lines
        for host, peer in (("alice", "bob"), ("bob", "alice")):
            report = json.loads(party.cli(host, "diagnose", peer, "--json", "--state-dir", party.state(host)))
            fallbacks = [i for i in report["incidents"] if i["description"].startswith("direct → relay")]
            assert fallbacks and fallbacks[-1]["cause"] == "direct_path_failed", report
