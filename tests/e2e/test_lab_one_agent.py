"""In the lab, with real WireGuard: a second `serve` on a running agent's state directory,
with the same flags, exits with one line naming the running one, and changes nothing of
it (its interface, its API token, its tunnel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]


def test_a_second_serve_on_a_running_agents_state_directory_changes_nothing() -> None:
    with Lab.build([HostSpec("alice", "open"), HostSpec("bob", "open")], relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents(["alice", "bob"])
        created = party.create("alice", "LAN")
        bob_ip = party.join("bob", created["invite"])["virtual_ip"]
        assert party.wait_ping("alice", bob_ip, 30) is not None
        state = Path(party.state("alice"))
        token = (state / "api-token").read_text()
        holder = (state / "agent.lock").read_text().strip()

        node = lab.host("alice")
        second = lab.run("alice", [*party.command, "serve", "--name", "alice", "--control", party.control_url,
                                   "--interface", node.wg_name, "--listen-port", "51820",
                                   "--state-dir", str(state)], timeout=60, check=False)

        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"lanrage: an agent (PID {holder}) already runs on the state directory "
                                   f"{state}"), second.stderr
        assert b"serve" in Path(f"/proc/{holder}/cmdline").read_bytes().split(b"\0")  # the running agent
        assert (state / "api-token").read_text() == token
        assert lab.ping("alice", bob_ip, count=1, timeout_s=2.0)  # interface and tunnel untouched
        assert party.status("alice")["parties"][0]["name"] == "LAN"  # the token still opens the API
