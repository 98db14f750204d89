"""A node accepts from a control server only what its own rules allow (issue findings 1 and 2).

A hostile server (the real server and protocol, lying about its parties: ``hostile.py``) hands
a real ``serve`` (simulated WireGuard) public subnets, a default route, addresses outside the
subnet, one address for two keys, and names with terminal escapes, a forged log line and a
bidi override. Each join is refused with a clear line, recorded, and nothing is configured:
no party, no address, no WireGuard peer, in the log or in ``status``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Node, Run, wait_for
from tests.security.hostile import hostile_control

CONFIGURING = ("PartyJoined", "VirtualIpAllocated", "WireGuardPeerConfigRequested", "WireGuardPeerConfigured",
               "PeerJoined", "LocalAddressAssigned")


def members(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def lie(party: dict[str, Any]) -> dict[str, Any]:
        party["members"] = [dict(member) for member in party["members"]]
        for member in party["members"]:
            change(member)
        return party
    return lie


def host(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(member: dict[str, Any]) -> None:
        if member["name"] == "host":
            change(member)
    return apply


def everything_in(subnet: str, prefix: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def lie(party: dict[str, Any]) -> dict[str, Any]:
        party = members(lambda m: m.update(virtual_ip=m["virtual_ip"].replace("10.66.", prefix)))(party)
        party["subnet"] = subnet
        return party
    return lie


def renamed(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda party: {**party, "name": name}


# (party name as created, the lie, the words the refusal must contain)
CASES: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("public", everything_in("8.8.0.0/16", "8.8."), "subnet 8.8.0.0/16 is outside this node's mesh range"),
    ("default-route", lambda p: {**p, "subnet": "0.0.0.0/0"}, "subnet 0.0.0.0/0 is outside"),
    ("wider", lambda p: {**p, "subnet": "10.0.0.0/8"}, "subnet 10.0.0.0/8 is outside"),
    ("address-outside", members(host(lambda m: m.update(virtual_ip="8.8.8.8"))),
     "virtual IP 8.8.8.8 is outside the party's subnet"),
    ("network-address", members(host(lambda m: m.update(virtual_ip="10.66.0.0"))), "10.66.0.0 is outside"),
    ("two-keys", members(host(lambda m: m.update(virtual_ip="10.66.0.2"))), "gives 10.66.0.2 to both"),
    ("escape", members(host(lambda m: m.update(name="\x1b]0;owned\x07\x1b[2J"))),
     "not a short printable name"),
    ("forged-line", renamed("lan\n2026-12-07 12:00:00 | INFO | joined party admin"),
     "not a short printable name"),
    ("bidi", members(host(lambda m: m.update(name="host\u202egnp.exe"))), "not a short printable name"),
    ("csi", renamed("lan\u009b2J"), "not a short printable name"),
]


def events(node: Node) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(node.state / "lanrage.db") as db:
        rows = db.execute("SELECT event_type, payload FROM events ORDER BY global_position").fetchall()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def test_a_hostile_server_cannot_steer_a_nodes_routing_or_names(tmp_path: Path) -> None:
    with hostile_control() as control, Run(tmp_path) as run:
        victim = Node(run, "victim", None).start()
        for name, lie, words in CASES:
            invite = control.party(name, lie)
            refused = victim.cli("party", "join", invite, check=False)
            assert refused.returncode != 0, (name, refused.stdout)
            assert "refused the party" in refused.stderr and words in refused.stderr, (name, refused.stderr)
            assert "\x1b" not in refused.stderr and "\u202e" not in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        recorded = events(victim)
        assert not [kind for kind, _ in recorded if kind in CONFIGURING]
        failures = [payload["error"] for kind, payload in recorded if kind == "PartyRequestFailed"]
        assert len(failures) == len(CASES)
        for (name, _, words), failure in zip(CASES, failures, strict=True):
            assert words in failure, (name, failure)
        assert victim.status()["parties"] == []
        # The victim left each refused party on the server: their hosts are alone in them.
        sizes = {party.name: len(party.members) for _, party in control.server._registry.parties}
        assert sizes == {name: 1 for name, _, _ in CASES}
        log = run.log("victim").read_text()
        assert "\x1b" not in log and "\u202e" not in log and "\x9b" not in log
        assert not re.search(r"^2026-12-07 12:00:00 \| INFO \| joined party admin", log, re.MULTILINE)

        # The same node joins an honest party of the same server, then hostile members arrive.
        invite = control.party("honest")
        joined = victim.join(invite)
        assert joined["virtual_ip"] == "10.66.0.2"
        control.server.member_lies["evil-name"] = lambda m: {**m, "name": "\x1b[31mred\x1b[0m"}
        control.server.member_lies["evil-twin"] = lambda m: {**m, "virtual_ip": "10.66.0.2"}
        control.server.member_lies["evil-route"] = lambda m: {**m, "virtual_ip": "8.8.8.8"}
        evil = {name: control.join(invite, name)["party"]["members"][-1]["peer_id"]
                for name in ("evil-name", "evil-twin", "evil-route")}
        control.join(invite, "friend")
        wait_for(lambda: "friend" in victim.members(joined["party_id"]), 20, "the honest friend")

        def refused_members() -> list[str] | None:
            said = [p["reason"] for kind, p in events(victim)
                    if kind == "MessageRejected" and p["actor"] == "agent"]
            return said if len(said) >= 3 else None

        refusals = wait_for(refused_members, 10, "three refused members")
        assert sorted(victim.members(joined["party_id"])) == ["friend", "host", "victim"]
        assert any("not a short printable name" in r for r in refusals)
        assert any("10.66.0.2" in r and "already" in r for r in refusals)
        assert any("8.8.8.8 is outside" in r for r in refusals)
        configured = {p["peer_id"] for kind, p in events(victim)
                      if kind in ("PeerJoined", "WireGuardPeerConfigRequested")}
        assert not configured & set(evil.values())
        log = run.log("victim").read_text()
        assert "\x1b" not in log


@pytest.mark.parametrize("mesh_range", ["0.0.0.0/0", "8.8.0.0/16", "10.0.0.0/7"])
def test_serve_refuses_a_mesh_range_that_is_not_private(tmp_path: Path, mesh_range: str) -> None:
    with Run(tmp_path) as run:
        done = run.cli("serve", "--adapters", "sim", "--state-dir", str(tmp_path / "s"),
                       "--mesh-range", mesh_range, check=False)
        assert done.returncode != 0
        assert "--mesh-range" in done.stderr and "private IPv4 network" in done.stderr, done.stderr


def test_two_honest_parties_never_give_one_address_to_two_keys(tmp_path: Path) -> None:
    """Two honest servers both start their parties at 10.66.0.1: the node in the first refuses the
    second (its members hold the node's addresses under other keys) instead of configuring one
    address for two keys; nothing of the second party is configured."""
    with hostile_control() as first, hostile_control() as second, Run(tmp_path) as run:
        victim = Node(run, "victim", None).start()
        party = victim.join(first.party("games"))
        assert party["virtual_ip"] == "10.66.0.2"  # the host is 10.66.0.1
        first.join(first.invites["games"], "friend")
        wait_for(lambda: "friend" in victim.members(party["party_id"]), 20, "the friend")  # 10.66.0.3
        refused = victim.cli("party", "join", second.party("movies"), check=False)
        assert refused.returncode != 0
        assert "10.66.0.1 of member" in refused.stderr and "already" in refused.stderr, refused.stderr
        assert "parties on one node must not share an address" in refused.stderr
        parties = victim.status()["parties"]
        assert [p["party_id"] for p in parties] == [party["party_id"]]
        opened = [p["party_id"] for kind, p in events(victim) if kind == "PartyJoined"]
        assert opened == [party["party_id"]]
        allocated = sorted((p["party_id"], p["virtual_ip"]) for kind, p in events(victim)
                           if kind == "VirtualIpAllocated")
        assert allocated == [(party["party_id"], f"10.66.0.{n}") for n in (1, 2, 3)]
