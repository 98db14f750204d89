"""Port mapping on a real router: Debian's miniupnpd in the lab, real agents through the CLI.

Alice sits behind a ``miniupnpd`` router that answers one protocol (one test each); Carl
behind a symmetric NAT, whose packets reach a port-restricted NAT only where a mapping lets
them in. Alice asks by default (auto: PCP, then NAT-PMP, then UPnP-IGD), offers the mapped
address, and Carl reaches her directly. With a short lifetime the mapping is renewed within
seconds, and a clean stop deletes it from the router's iptables. With ``--port-mapping off``
the same pair goes through the relay: the mapping is what opened the direct path.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
LIFETIME_S = 6  # renewed at 3 s
MAPPING_EVENTS = ("PortMappingRequested", "PortMappingObtained", "PortMappingRenewed", "PortMappingLost",
                  "PortMappingRefused", "PortMappingReleased")


@contextmanager
def pair(protocol: str, alice_mapping: str = "auto", lifetime_s: int = LIFETIME_S
         ) -> Iterator[tuple[LabParty, dict[str, str]]]:
    hosts = [HostSpec("alice", "miniupnpd", mapping=(protocol,)), HostSpec("carl", "symmetric")]
    with Lab.build(hosts=hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agent("alice", wait=False, extra=("--port-mapping", alice_mapping,
                                                      "--port-mapping-lifetime", str(lifetime_s)))
        party.start_agent("carl", wait=False)
        for host in ("alice", "carl"):
            lab.wait_tcp_listening(host, 8666, 60)
        created = party.create("alice", "LAN")
        ips = {"alice": created["virtual_ip"], "carl": party.join("carl", created["invite"])["virtual_ip"]}
        yield party, ips


def path_to(party: LabParty, host: str, peer: str, timeout_s: float) -> str | None:
    """The path ``host`` holds to ``peer`` once connected (None if it never connects in time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        peers = party.peers(host)
        if peer in peers and peers[peer]["state"] == "connected":
            return str(peers[peer]["path"])
        time.sleep(0.5)
    return None


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [str(event["event_type"]) for event in events]


@pytest.mark.parametrize("protocol", ["pcp", "natpmp", "upnp"])
def test_a_mapping_by_each_protocol_lets_a_symmetric_nat_in_directly(protocol: str) -> None:
    with pair(protocol) as (party, ips):
        lab = party.lab
        alice = lab.host("alice").public_ip
        steps = party.events("alice", *MAPPING_EVENTS)
        assert kinds(steps)[:2] == ["PortMappingRequested", "PortMappingObtained"]
        requested, obtained = steps[0]["payload"], steps[1]["payload"]
        assert requested["protocols"] == ["pcp", "natpmp", "upnp"] and requested["reason"] == "start"
        assert (obtained["protocol"], obtained["external_ip"], obtained["external_port"]) == \
            (protocol, alice, 51820)
        assert any("--dport 51820" in rule for rule in lab.router_mappings("alice"))
        live = party.status("alice")["agent"]
        assert live["port_mapping"]["external"] == f"{alice}:51820"
        assert live["candidates"][0] == f"{alice}:51820"  # offered first

        assert party.wait_ping("carl", ips["alice"], 30) is not None
        assert path_to(party, "carl", "alice", 20) == "direct"
        assert path_to(party, "alice", "carl", 20) == "direct"

        deadline = time.monotonic() + 3 * LIFETIME_S
        while time.monotonic() < deadline and not party.status("alice")["agent"]["port_mapping"]["renewals"]:
            time.sleep(0.5)
        party.kill_agent("alice", signal.SIGTERM)
        assert not any("--dport 51820" in rule for rule in lab.router_mappings("alice"))
        steps = party.events("alice", *MAPPING_EVENTS)
        assert "PortMappingRenewed" in kinds(steps) and "PortMappingLost" not in kinds(steps)
        assert {step["payload"]["protocol"] for step in steps[1:]} == {protocol}
        assert kinds(steps)[-1] == "PortMappingReleased" and steps[-1]["payload"]["error"] == ""
        refused = [step["payload"] for step in party.events("carl", *MAPPING_EVENTS)]
        assert len(refused) == 2 and str(refused[1]["reason"]).count("the gateway does not listen") == 3


def test_without_a_mapping_the_symmetric_nat_takes_the_relay() -> None:
    with pair("pcp", alice_mapping="off") as (party, ips):
        assert party.wait_ping("carl", ips["alice"], 30) is not None
        assert path_to(party, "alice", "carl", 20) == "relay"
        assert not party.lab.router_mappings("alice")
        assert not party.events("alice", *MAPPING_EVENTS)


def test_a_router_that_restarts_and_forgets_the_mapping_is_noticed_and_asked_again() -> None:
    lifetime_s = 20  # renewed every 10 s: the router is back well before the next renewal
    with pair("pcp", lifetime_s=lifetime_s) as (party, ips):
        lab = party.lab

        def renewals() -> int:
            return int(party.status("alice")["agent"]["port_mapping"]["renewals"] or 0)

        deadline = time.monotonic() + lifetime_s
        while time.monotonic() < deadline and renewals() == 0:
            time.sleep(0.5)
        assert renewals() == 1
        lab.reboot_mapping_service("alice")
        assert not lab.router_mappings("alice")
        deadline = time.monotonic() + lifetime_s
        while time.monotonic() < deadline and not lab.router_mappings("alice"):
            time.sleep(0.5)
        assert any("--dport 51820" in rule for rule in lab.router_mappings("alice"))
        steps = party.events("alice", *MAPPING_EVENTS)
        lost = [step["payload"] for step in steps if step["event_type"] == "PortMappingLost"]
        assert len(lost) == 1 and lost[0]["by_router"] is True
        assert "it restarted (its epoch went back)" in str(lost[0]["reason"])
        assert kinds(steps)[-2:] == ["PortMappingLost", "PortMappingObtained"]
        live = party.status("alice")["agent"]["port_mapping"]
        assert live["external"] == f"{lab.host('alice').public_ip}:51820" and live["problem"] is None
        assert party.wait_ping("carl", ips["alice"], 10) is not None
