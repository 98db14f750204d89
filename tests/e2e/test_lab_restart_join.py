"""A `party join` made seconds after the agent was killed the way the shipped systemd unit
ends it (``KillMode=mixed``: the agent, then SIGKILL to every process left in its control
group, wireguard-go included) and started again: it works (the tunnel is up, pings answer)
or it fails with its cause and a non-zero exit; never "joined" while nothing works. And
wireguard-go dying under a running agent: recorded, and the tunnel comes back by itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab
from lab.shell import netns_pids

pytestmark = pytest.mark.lab

JOIN_WORKS_S = 10.0  # a join that answered "joined" has a tunnel that answers within this
HOLD_PORT = ("import socket, time\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "s.bind(('0.0.0.0', 51820))\n"
             "print('bound', flush=True)\n"
             "time.sleep(120)\n")


def kill_control_group(lab: Lab, party: LabParty, host: str) -> list[int]:
    """SIGKILL to the agent's process group and to every other process in its host (its
    wireguard-go runs in a session of its own): what systemd does to the unit's control group."""
    agent = party.agents.pop(host)
    group = [pid for pid in netns_pids(lab.host(host).netns) if pid != os.getpid()]
    with_wireguard = [pid for pid in group if b"wireguard-go" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.killpg(agent.pid, signal.SIGKILL)
    for pid in group:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    agent.popen.wait(10)
    lab.wait_for(lambda: not set(netns_pids(lab.host(host).netns)) & set(group), 10,
                 what=f"{host}'s control group gone")
    return with_wireguard


@pytest.mark.parametrize("port_taken", [False, True], ids=["as-killed", "port-taken-meanwhile"])
def test_a_join_seconds_after_the_agent_was_killed_as_systemd_does_works_or_says_why(
        require_root: None, port_taken: bool) -> None:
    """``port-taken-meanwhile``: another program holds the WireGuard port when the agent comes
    back, so the join cannot work and must say so (and ``status`` says why the restored party
    has no tunnel)."""
    with Lab.build(hosts=[HostSpec("alice", "open"), HostSpec("bob", "open")], relays=0) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents(["alice", "bob"])
        first = party.create("alice", "LAN")
        second = party.create("alice", "LAN2")
        party.join("bob", first["invite"])
        assert party.wait_ping("bob", first["virtual_ip"], 20) is not None
        assert kill_control_group(lab, party, "bob"), "bob's wireguard-go was not found"
        holder = None
        if port_taken:
            holder = lab.popen("bob", [sys.executable, "-c", HOLD_PORT], stdout=subprocess.PIPE, text=True)
            assert holder.popen.stdout is not None and holder.popen.stdout.readline() == "bound\n"

        party.start_agent("bob")  # the API answers: the unit is up again
        up = time.monotonic()
        joined = lab.run("bob", [*party.command, "party", "join", second["invite"], "--json", "--state-dir",
                                 party.state("bob")], timeout=60, check=False)
        answered = time.monotonic() - up
        if port_taken and joined.returncode == 0:
            log = party.agents["bob"].log_path
            raise AssertionError(f"'joined' with the port held: {joined.stdout}; bob's log ends:\n"
                                 + (log.read_text(errors="replace")[-4000:] if log else ""))
        if joined.returncode == 0:
            you = json.loads(joined.stdout)["virtual_ip"]
            assert party.wait_ping("bob", second["virtual_ip"], JOIN_WORKS_S) is not None, (
                f"'joined' as {you} {answered:.1f} s after the restart, but alice's "
                f"{second['virtual_ip']} does not answer")
            assert party.wait_ping("bob", first["virtual_ip"], JOIN_WORKS_S) is not None
            shown = {p["party_id"]: p for p in party.status("bob")["parties"]}
            errors = [shown[p]["interface_error"] for p in (first["party_id"], second["party_id"])]
            assert errors == [None, None]
        else:
            lines = joined.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("lanrage: "), joined.stderr
            shown = {p["party_id"]: p for p in party.status("bob")["parties"]}
            assert second["party_id"] not in shown
            if holder is not None:
                held = "UDP port 51820 (--listen-port) is "
                assert held in lines[0]
                assert held in (shown[first["party_id"]]["interface_error"] or "")
        print(f"\njoin {'worked' if joined.returncode == 0 else 'refused: ' + joined.stderr.strip()}, "
              f"answered {answered:.1f} s after the restarted agent's API was up")


def test_wireguard_go_exiting_under_a_party_is_recorded_and_the_tunnel_comes_back(
        require_root: None) -> None:
    """wireguard-go dies under a working party (the agent lives on): the log says why the
    address is on no working interface, the interface is made again with its peers, and the
    tunnel answers again without a restart or a new join."""
    with Lab.build(hosts=[HostSpec("alice", "open"), HostSpec("bob", "open")], relays=0) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents(["alice", "bob"])
        created = party.create("alice", "LAN")
        party.join("bob", created["invite"])
        assert party.wait_ping("bob", created["virtual_ip"], 20) is not None
        wireguard = [pid for pid in netns_pids(lab.host("bob").netns)
                     if b"wireguard-go" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(wireguard) == 1
        os.kill(wireguard[0], signal.SIGKILL)
        back = party.wait_ping("bob", created["virtual_ip"], 20)
        assert back is not None, "the tunnel did not come back within 20 s"
        outcomes = [(e["event_type"], e["payload"].get("error", ""))
                    for e in party.events("bob", "LocalAddressFailed", "LocalAddressAssigned")]
        gone = f"WireGuard interface {lab.host('bob').wg_name} is gone (did wireguard-go exit?)"
        assert outcomes == [("LocalAddressAssigned", ""), ("LocalAddressFailed", gone),
                            ("LocalAddressAssigned", "")]
        print(f"\nthe tunnel answered again {back:.1f} s after wireguard-go was killed")
