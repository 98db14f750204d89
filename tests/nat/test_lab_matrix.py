"""In the lab: NAT detection of the four router types, and the NAT matrix over real WireGuard.

Every cell runs the real sequence of a node: STUN detection from the WireGuard port,
candidates exchanged (through this test process: the signalling), a coordinated punch
from the WireGuard port confirmed by ACKs, and the relay (a real relay-server in a
relay host, tickets issued as the control server does) when the punch fails or both
sides are symmetric. Then a ping through the tunnel, timed from the start.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from events.types import NAT_FULL_CONE, NAT_OPEN, NAT_PORT_RESTRICTED, NAT_SYMMETRIC
from lab import HostSpec, Lab, LabProcess
from mesh.nat.punch import should_try_direct
from mesh.relay import issue_tickets
from tests.nat.labkit import Node, ping_until

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]

TYPES = ("open", "port_forwarded", "port_restricted", "symmetric")
SHORT = {"open": "op", "port_forwarded": "pf", "port_restricted": "pr", "symmetric": "sy"}
FORWARD_PORT = 51820
RELAY_PORT = 3478
CELLS = list(itertools.combinations_with_replacement(TYPES, 2))
# Which cells can go direct: a symmetric NAT's mapping towards the peer is unknown in
# advance, so it only works when the other side accepts unsolicited packets.
RELAY_ONLY = {("port_restricted", "symmetric"), ("symmetric", "symmetric")}
_ports = itertools.count(42000, 2)


@dataclass
class RelayLab:
    lab: Lab
    secret: bytes
    relays: dict[str, LabProcess]

    def relay_address(self, name: str) -> str:
        return f"{self.lab.host(name).public_ip}:{RELAY_PORT}"


def start_relay(lab: Lab, name: str, secret_file: str) -> LabProcess:
    proc = lab.popen(name, [sys.executable, "cli.py", "relay-server", "--listen", f"0.0.0.0:{RELAY_PORT}",
                            "--public", f"{lab.host(name).public_ip}:{RELAY_PORT}", "--secret-file",
                            secret_file, "--db", f"sqlite:///{lab.workdir / (name + '.db')}", "--state-dir",
                            str(lab.workdir / f"state-{name}"), "--sample-interval", "2"])
    lab.wait_udp_listening(name, RELAY_PORT)
    return proc


@pytest.fixture(scope="module")
def world() -> Iterator[RelayLab]:
    hosts = [HostSpec(f"{SHORT[nat]}{index}", nat, forward_port=FORWARD_PORT)
             for nat in TYPES for index in (1, 2)]
    with Lab.build(hosts, relays=2) as lab:
        secret = os.urandom(32)
        secret_file = lab.workdir / "relay.secret"
        secret_file.write_text(secret.hex())
        relays = {name: start_relay(lab, name, str(secret_file)) for name in ("relay1", "relay2")}
        yield RelayLab(lab, secret, relays)


def port_for(nat: str) -> int:
    return FORWARD_PORT if nat == "port_forwarded" else next(_ports)


def both(first: Any, second: Any) -> tuple[Any, Any]:
    """Run two callables at once (each node works in parallel, as real nodes do)."""
    results: dict[int, Any] = {}
    thread = threading.Thread(target=lambda: results.__setitem__(1, second()))
    thread.start()
    results[0] = first()
    thread.join()
    return results[0], results[1]


def stun_list(lab: Lab) -> list[str]:
    return [f"{host}:{port}" for host, port in lab.stun_servers]


def connect(world: RelayLab, a: Node, b: Node, punch_timeout_s: float = 3.0,
            relay: str = "relay1") -> dict[str, Any]:
    """What two agents do for a new peer connection; returns how it went."""
    lab = world.lab
    start = time.monotonic()
    detected_a, detected_b = both(lambda: a.call(cmd="detect", stun=stun_list(lab)),
                                  lambda: b.call(cmd="detect", stun=stun_list(lab)))
    detect_s = time.monotonic() - start
    nat_a = (detected_a["nat"] or {}).get("nat_type")
    nat_b = (detected_b["nat"] or {}).get("nat_type")
    path, punch_ms, endpoints = "relay", None, None
    if should_try_direct(nat_a, nat_b):
        cand_a = a.call(cmd="candidates")["candidates"]
        cand_b = b.call(cmd="candidates")["candidates"]
        session = os.urandom(16).hex()
        start_at = time.time() + 0.2  # the agreed moment, as signalling would carry it
        res_a, res_b = both(
            lambda: a.call(cmd="punch", session=session, remote=cand_b, timeout=punch_timeout_s,
                           start_at=start_at)["result"],
            lambda: b.call(cmd="punch", session=session, remote=cand_a, timeout=punch_timeout_s,
                           start_at=start_at)["result"])
        punch_ms = max(res_a["elapsed_ms"], res_b["elapsed_ms"])
        if res_a["succeeded"] and res_b["succeeded"]:
            path, endpoints = "direct", (res_a["endpoint"], res_b["endpoint"])
    if endpoints is None:
        endpoints = relay_endpoints(world, a, b, relay)
    a.call(cmd="peer", public_key=b.public_key, endpoint=endpoints[0], allowed_ips=[f"{b.vip}/32"])
    b.call(cmd="peer", public_key=a.public_key, endpoint=endpoints[1], allowed_ips=[f"{a.vip}/32"])
    ping_start = time.monotonic()
    first_reply = ping_until(lab, a.host, b.vip, 15)
    return {"nat_a": nat_a, "nat_b": nat_b, "path": path, "endpoints": endpoints, "detect_s": detect_s,
            "punch_ms": punch_ms, "ping_ok": first_reply is not None,
            "ping_ms": None if first_reply is None else first_reply * 1000,
            "total_s": (time.monotonic() - start) if first_reply is not None else None,
            "connect_ms": (time.monotonic() - start - detect_s) * 1000, "ping_start": ping_start}


def relay_endpoints(world: RelayLab, a: Node, b: Node, relay: str) -> tuple[str, str]:
    ticket_a, ticket_b = issue_tickets(world.secret, world.relay_address(relay), "matrix", a.name, b.name)
    endpoint_a = a.call(cmd="relay", ticket=ticket_a.to_json())["endpoint"]
    endpoint_b = b.call(cmd="relay", ticket=ticket_b.to_json())["endpoint"]
    return endpoint_a, endpoint_b


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
