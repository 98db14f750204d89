"""In the lab: NAT detection of the four router types, and the NAT matrix over real WireGuard.

Every cell runs the real sequence of a node: STUN detection from the WireGuard port,
candidates exchanged (through this test process: the signalling), a coordinated punch
from the WireGuard port confirmed by ACKs, and the relay (a real relay-server in a
relay host, tickets issued as the control server does) when the punch fails or both
sides are symmetric. Then a ping through the tunnel, timed from the start.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from events.types import NAT_FULL_CONE, NAT_OPEN, NAT_PORT_RESTRICTED, NAT_SYMMETRIC
from lab import HostSpec
from tests.nat.labkit import FORWARD_PORT, Node, RelayLab, connect, ping_until, port_for, relay_lab, stun_list

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]

TYPES = ("open", "port_forwarded", "port_restricted", "symmetric")
SHORT = {"open": "op", "port_forwarded": "pf", "port_restricted": "pr", "symmetric": "sy"}
CELLS = list(itertools.combinations_with_replacement(TYPES, 2))
# Which cells can go direct: a symmetric NAT's mapping towards the peer is unknown in
# advance, so it only works when the other side accepts unsolicited packets.
RELAY_ONLY = {("port_restricted", "symmetric"), ("symmetric", "symmetric")}


@pytest.fixture(scope="module")
def world() -> Iterator[RelayLab]:
    hosts = [HostSpec(f"{SHORT[nat]}{index}", nat, forward_port=FORWARD_PORT)
             for nat in TYPES for index in (1, 2)]
    with relay_lab(hosts) as built:
        yield built


EXPECTED_NAT = {"open": NAT_OPEN, "port_forwarded": NAT_FULL_CONE, "port_restricted": NAT_PORT_RESTRICTED,
                "symmetric": NAT_SYMMETRIC}


@pytest.mark.parametrize("nat", TYPES)
def test_nat_detection_from_the_wireguard_port(world: RelayLab, nat: str) -> None:
    """Against stund, from the port wireguard-go holds (a port-forwarded router DNATs exactly that
    port, so from it the host is reachable like a full cone)."""
    lab = world.lab
    host = f"{SHORT[nat]}1"
    node = Node(lab, host, "10.66.9.1/16", port_for(nat))
    try:
        answer = node.call(cmd="detect", stun=stun_list(lab))
    finally:
        node.close()
    info = answer["nat"]
    assert info is not None, answer
    assert info["nat_type"] == EXPECTED_NAT[nat]
    assert info["public_ip"] == lab.host(host).public_ip  # kept from the first binding test
    if nat != "symmetric":
        assert info["public_port"] == node.port
    assert info["local_port"] == node.port


def test_no_stun_answer_means_relay_only(world: RelayLab) -> None:
    node = Node(world.lab, "pr1", "10.66.9.2/16", port_for("port_restricted"))
    try:
        answer = node.call(cmd="detect", stun=[f"{world.lab.host('control').public_ip}:3478"])
    finally:
        node.close()
    assert answer["nat"] is None and "no answer" in answer["error"]


RESULTS: dict[tuple[str, str], dict[str, Any]] = {}


@pytest.mark.parametrize(("nat_a", "nat_b"), CELLS, ids=[f"{SHORT[a]}-{SHORT[b]}" for a, b in CELLS])
def test_nat_matrix_cell(world: RelayLab, nat_a: str, nat_b: str) -> None:
    lab = world.lab
    cell = CELLS.index((nat_a, nat_b))
    a = Node(lab, f"{SHORT[nat_a]}1", f"10.66.{cell + 10}.1/16", port_for(nat_a))
    b = Node(lab, f"{SHORT[nat_b]}2", f"10.66.{cell + 10}.2/16", port_for(nat_b))
    try:
        outcome = connect(world, a, b)
        RESULTS[(nat_a, nat_b)] = outcome
        print(f"\n{nat_a} x {nat_b}: {outcome['path']}, ping after config {outcome['ping_ms']} ms")
        assert outcome["ping_ok"], f"no ping through the tunnel: {outcome}\n{a.log()}\n{b.log()}"
        assert ping_until(lab, b.host, a.vip, 5) is not None
        expected = "relay" if (nat_a, nat_b) in RELAY_ONLY else "direct"
        assert outcome["path"] == expected, outcome
        if expected == "direct":
            stats = a.call(cmd="stats")["peers"][b.public_key]
            assert not stats["endpoint"].startswith("127.0.0.1")
    finally:
        a.close()
        b.close()


def test_zz_print_matrix_table() -> None:
    """Prints the table for docs/nat-relay.md (run with -s); fails if any cell is missing."""
    lines = ["| A \\ B | path | STUN detect (s) | punch (ms) | first ping after config (ms) | start to first "
             "ping reply (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for nat_a, nat_b in CELLS:
        r = RESULTS[(nat_a, nat_b)]
        punch = "skipped (both symmetric)" if r["punch_ms"] is None else f"{r['punch_ms']:.0f}"
        lines.append(f"| {nat_a} x {nat_b} | {r['path']} | {r['detect_s']:.2f} | {punch} | "
                     f"{r['ping_ms']:.0f} | {r['total_s']:.2f} |")
    print("\n" + "\n".join(lines))
    assert len(RESULTS) == len(CELLS)
