"""In the lab, end to end through the control server (the real signalling channel).

The two nodes meet in a party on the real ``control-server``; candidates, the punch
session secret and the agreed moment travel as ``signal`` messages over its WebSocket;
relay tickets come from its ``relay_request`` (it shares the relay secret with
``relay-server``). Nothing passes through the test process but the commands.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab import HostSpec
from tests.nat.labkit import Node, RelayLab, both, ping_until, port_for, relay_lab, set_endpoints, stun_list

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
CONTROL_PORT = 8667


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[RelayLab, str]]:
    with relay_lab([HostSpec("pr1", "port_restricted"), HostSpec("pr2", "port_restricted"),
                    HostSpec("sy1", "symmetric"), HostSpec("sy2", "symmetric")], relays=1) as built:
        lab = built.lab
        lab.popen("control", [sys.executable, "cli.py", "control-server", "--listen",
                              f"0.0.0.0:{CONTROL_PORT}", "--relay", built.relay_address("relay1"),
                              "--relay-secret-file", str(lab.workdir / "relay.secret"),
                              "--state-dir", str(lab.workdir / "control"),
                              "--db", f"sqlite:///{lab.workdir / 'control.db'}"])
        lab.wait_tcp_listening("control", CONTROL_PORT)
        yield built, f"ws://{lab.host('control').public_ip}:{CONTROL_PORT}"


@contextlib.contextmanager
def party(world: tuple[RelayLab, str], host_a: str, host_b: str,
          subnet: int) -> Iterator[tuple[Node, Node, str, str, str]]:
    relay_world, url = world
    lab = relay_world.lab
    a = Node(lab, host_a, f"10.66.{subnet}.1/16", port_for(lab.host(host_a).nat))
    try:
        b = Node(lab, host_b, f"10.66.{subnet}.2/16", port_for(lab.host(host_b).nat))
        try:
            id_a = a.call(cmd="control", url=url, name=host_a)["peer_id"]
            id_b = b.call(cmd="control", url=url, name=host_b)["peer_id"]
            created = a.call(cmd="control_request", kind="create_party", name="lab")["answer"]
            party_id = created["party"]["party_id"]
            b.call(cmd="control_request", kind="join_party", party_id=party_id, secret=created["secret"])
            yield a, b, party_id, id_a, id_b
        finally:
            b.close()
    finally:
        a.close()


def detect(relay_world: RelayLab, a: Node, b: Node) -> tuple[Any, Any]:
    stun = stun_list(relay_world.lab)
    return both(lambda: a.call(cmd="detect", stun=stun)["nat"],
                lambda: b.call(cmd="detect", stun=stun)["nat"])


def test_punch_signalled_through_the_control_server(world: tuple[RelayLab, str]) -> None:
    relay_world, _ = world
    lab = relay_world.lab
    with party(world, "pr1", "pr2", 70) as (a, b, party_id, id_a, id_b):
        detect(relay_world, a, b)
        start = time.monotonic()
        offer = {"kind": "punch_offer", "session": os.urandom(16).hex(), "start_at": time.time() + 0.5,
                 "candidates": a.call(cmd="candidates")["candidates"]}
        a.call(cmd="control_request", kind="signal", party_id=party_id, to=id_b, payload=offer)
        got = b.call(cmd="wait_push", type="signal")["push"]
        assert got["from"] == id_a and got["payload"]["kind"] == "punch_offer"
        received = got["payload"]
        answer = {"kind": "punch_answer", "candidates": b.call(cmd="candidates")["candidates"]}
        b.call(cmd="control_request", kind="signal", party_id=party_id, to=id_a, payload=answer)
        remote_b = a.call(cmd="wait_push", type="signal")["push"]["payload"]["candidates"]
        res_a, res_b = both(
            lambda: a.call(cmd="punch", session=offer["session"], remote=remote_b, timeout=3,
                           start_at=offer["start_at"])["result"],
            lambda: b.call(cmd="punch", session=received["session"], remote=received["candidates"], timeout=3,
                           start_at=received["start_at"])["result"])
        assert res_a["succeeded"] and res_b["succeeded"], (res_a, res_b)
        set_endpoints(a, b, (res_a["endpoint"], res_b["endpoint"]))
        assert ping_until(lab, "pr1", b.vip, 10) is not None
        assert ping_until(lab, "pr2", a.vip, 5) is not None
        print(f"\nsignalled punch pr x pr: first ping {time.monotonic() - start:.2f} s after the offer")
        assert res_a["endpoint"] == f"{lab.host('pr2').public_ip}:{b.port}"


def test_relay_ticket_from_the_control_server(world: tuple[RelayLab, str]) -> None:
    relay_world, _ = world
    lab = relay_world.lab
    with party(world, "sy1", "sy2", 71) as (a, b, party_id, _id_a, id_b):
        nat_a, nat_b = detect(relay_world, a, b)
        assert nat_a["nat_type"] == nat_b["nat_type"] == "symmetric"  # both symmetric: straight to relay
        offer = a.call(cmd="control_request", kind="relay_request", party_id=party_id, to=id_b)["answer"]
        assert offer["type"] == "relay_offer" and offer["delivered"]
        endpoint_a = a.call(cmd="relay_offer", ticket=offer["ticket"])["endpoint"]
        pushed = b.call(cmd="wait_push", type="relay_offer")["push"]
        endpoint_b = b.call(cmd="relay_offer", ticket=pushed["ticket"])["endpoint"]
        assert offer["ticket"]["session_id"] == pushed["ticket"]["session_id"]
        set_endpoints(a, b, (endpoint_a, endpoint_b))
        assert ping_until(lab, "sy1", b.vip, 10) is not None
        assert ping_until(lab, "sy2", a.vip, 5) is not None
