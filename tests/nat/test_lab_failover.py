"""In the lab: relay failover, direct -> relay -> direct, and the relay's security across NATs.

The decisions (when to leave a relay, when to fall back, when to retry direct) belong
to the actors; here the test plays that part with the mesh-level mechanisms the actors
call: relay probes, ``selection.choose``, ticket allocation, punching and WireGuard
endpoint changes, on real wireguard-go behind real NAT routers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest

from lab import HostSpec
from mesh.relay import issue_tickets, wire
from mesh.relay.selection import choose
from tests.nat.labkit import (
    RELAY_PORT,
    Node,
    RelayLab,
    connect,
    ping_until,
    port_for,
    punch_pair,
    relay_endpoints,
    relay_lab,
    set_endpoints,
)

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]

PROBE_INTERVAL_S = 0.25
MISSES_TO_LEAVE = 2


@pytest.fixture(scope="module")
def world() -> Iterator[RelayLab]:
    with relay_lab([HostSpec("pr1", "port_restricted"), HostSpec("pr2", "port_restricted"),
                    HostSpec("sy1", "symmetric"), HostSpec("mal", "open")]) as built:
        yield built


@contextlib.contextmanager
def pair(world: RelayLab, host_a: str, host_b: str, subnet: int) -> Iterator[tuple[Node, Node]]:
    lab = world.lab
    a = Node(lab, host_a, f"10.66.{subnet}.1/16", port_for(lab.host(host_a).nat))
    try:
        b = Node(lab, host_b, f"10.66.{subnet}.2/16", port_for(lab.host(host_b).nat))
        try:
            yield a, b
        finally:
            b.close()
    finally:
        a.close()


def endpoint_of(node: Node, peer: Node) -> str:
    return node.call(cmd="stats")["peers"][peer.public_key]["endpoint"]


def test_killed_relay_moves_to_the_other_within_3_s(world: RelayLab) -> None:
    lab = world.lab
    relays = [world.relay_address("relay1"), world.relay_address("relay2")]
    with pair(world, "pr1", "sy1", 60) as (a, b):
        set_endpoints(a, b, relay_endpoints(world, a, b, "relay1"))
        assert ping_until(lab, "pr1", b.vip, 10) is not None
        current = relays[0]
        lab.kill(world.relays["relay1"])
        killed = time.monotonic()
        misses = 0
        deadline = killed + 10
        while time.monotonic() < deadline:  # the relay monitor: probe every known relay
            rtts = {relay: a.call(cmd="probe", relay=relay, timeout=PROBE_INTERVAL_S)["rtt_ms"]
                    for relay in relays}
            misses = misses + 1 if rtts[current] is None else 0
            if misses >= MISSES_TO_LEAVE:
                current = choose(current, rtts)
                assert current == relays[1]
                break
            time.sleep(max(0.0, PROBE_INTERVAL_S - 0.05))
        set_endpoints(a, b, relay_endpoints(world, a, b, "relay2"))
        first = ping_until(lab, "pr1", b.vip, 5)
        elapsed = time.monotonic() - killed
        assert first is not None, "no ping through relay2"
        assert elapsed < 3.0, f"moved to relay2 only after {elapsed:.2f} s"
        assert endpoint_of(a, b).startswith("127.0.0.1:")
    print(f"\nrelay failover: first ping through relay2 {elapsed:.2f} s after relay1 was killed")


def router_block(world: RelayLab, host: str, peer_ip: str, block: bool) -> None:
    router = world.lab.host(host).router_netns
    assert router is not None
    for direction in ("-s", "-d"):
        subprocess.run(["ip", "netns", "exec", router, "iptables", "-I" if block else "-D", "FORWARD",
                        direction, peer_ip, "-p", "udp", "-j", "DROP"], check=True, timeout=10)


def test_blocked_direct_falls_back_to_relay_and_comes_back(world: RelayLab) -> None:
    lab = world.lab
    peer_ip = lab.host("pr2").public_ip
    with pair(world, "pr1", "pr2", 61) as (a, b):
        outcome = connect(world, a, b)
        assert outcome["path"] == "direct" and outcome["ping_ok"], outcome
        router_block(world, "pr1", peer_ip, True)
        try:
            blocked = time.monotonic()
            assert ping_until(lab, "pr1", b.vip, 2) is None  # the probe sees the direct path die
            set_endpoints(a, b, relay_endpoints(world, a, b, "relay2"))
            assert ping_until(lab, "pr1", b.vip, 5) is not None
            fallback_s = time.monotonic() - blocked
            assert endpoint_of(a, b).startswith("127.0.0.1:")
            retry, _ = punch_pair(a, b, 1.0)  # the periodic direct retry, while still blocked
            assert retry is None
        finally:
            router_block(world, "pr1", peer_ip, False)
        unblocked = time.monotonic()
        endpoints = None
        for _ in range(5):  # retry direct every second (the agent's default is 30 s)
            endpoints, _ = punch_pair(a, b, 1.0)
            if endpoints is not None:
                break
            time.sleep(1.0)
        assert endpoints is not None, "direct path did not come back after unblocking"
        set_endpoints(a, b, endpoints)
        assert ping_until(lab, "pr1", b.vip, 5) is not None
        upgrade_s = time.monotonic() - unblocked
        assert endpoint_of(a, b) == endpoints[0] and not endpoints[0].startswith("127.0.0.1")
        assert ping_until(lab, "pr2", a.vip, 5) is not None
    print(f"\ndirect blocked -> relay in {fallback_s:.2f} s (2 s of it waiting for the probe); "
          f"unblocked -> direct again in {upgrade_s:.2f} s")


def test_relay_forwards_nothing_for_strangers_across_the_internet(world: RelayLab) -> None:
    """A host on the internet knows the relay and a session id, but holds no key."""
    lab = world.lab
    relay = world.relay_address("relay2")
    with pair(world, "pr1", "pr2", 62) as (a, b):
        set_endpoints(a, b, relay_endpoints(world, a, b, "relay2"))
        assert ping_until(lab, "pr1", b.vip, 10) is not None
        before = a.call(cmd="stats")["peers"][b.public_key]["rx_bytes"]
        ticket, _ = issue_tickets(os.urandom(32), relay, "matrix", a.name, b.name)  # wrong secret
        script = f"""
import os, socket, time
from mesh.relay import wire
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
host, port = "{relay.split(':')[0]}", {RELAY_PORT}
hello = wire.encode_hello(wire.HELLO, bytes.fromhex("{ticket.key_hex}"), 0, {ticket.expiry_s},
                          int(time.time() * 1000), os.urandom(16), "{ticket.session_id}", "matrix",
                          "{a.name}", "{b.name}")
s.sendto(hello, (host, port))
answer = s.recv(100)
print("refused" if wire.parse_refused(answer) else "accepted")
for i in range(500):
    s.sendto(b"\\x04\\0\\0\\0" + i.to_bytes(12, "big") + b"x" * 80, (host, port))
s.settimeout(0.5)
try:
    s.recv(2048)
    print("got data")
except TimeoutError:
    print("nothing")
"""
        out = lab.run("mal", ["python3", "-c", script], env={"PYTHONPATH": str(lab_repo())}).stdout.split()
        assert out == ["refused", "nothing"]
        time.sleep(2.5)  # one counter sample (the relays sample every 2 s in these tests)
        after = a.call(cmd="stats")["peers"][b.public_key]["rx_bytes"]
        assert after - before < 2000  # keepalives at most: none of the 500 junk packets arrived
    counters = relay_counters(world, "relay2")
    assert counters["dropped_unauthenticated"] >= 500


def lab_repo() -> str:
    from tests.nat import labkit

    return str(labkit.Path(labkit.__file__).resolve().parents[2])


def relay_counters(world: RelayLab, name: str) -> dict[str, int]:
    db = world.lab.workdir / f"{name}.db"
    rows = sqlite3.connect(db).execute(
        "SELECT payload FROM events WHERE event_type = 'RelayCountersSampled'").fetchall()
    import json

    totals: dict[str, int] = {}
    for (payload,) in rows:
        for key, value in json.loads(payload).items():
            if key.startswith(("dropped_", "forwarded_")):
                totals[key] = totals.get(key, 0) + value
    return totals


def test_wire_constants_are_what_the_lab_script_assumes() -> None:
    assert wire.MAGIC == b"LRy" and socket.AF_INET
