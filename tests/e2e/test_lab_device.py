"""A device without LANrage, in the network lab: a host with only ``wg-quick`` (userspace
wireguard-go) and the config ``lanrage party export`` wrote joins a party of two members
behind NATs through the member that exported it; every member pings it and it pings them.
"""

from __future__ import annotations

import json
import time

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab
from mesh.keys import PrivateKey
from tests.e2e.test_lab import every_pair_pings

pytestmark = pytest.mark.lab

WG_QUICK_ENV = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}


def devices(party: LabParty, host: str) -> dict[str, dict]:
    parties = party.status(host)["parties"]
    return {d["name"]: d for d in parties[0]["devices"]} if parties else {}


def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(0.5)


def test_a_host_with_only_wg_quick_joins_through_the_member_that_exported_it(require_root: None) -> None:
    hosts = [HostSpec("alice", "open"), HostSpec("bob", "port_restricted"),
             HostSpec("switch", "port_restricted")]
    with Lab.build(hosts=hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents(["alice", "bob"])
        created = party.create("alice", "LAN")
        ips = {"alice": created["virtual_ip"], "bob": party.join("bob", created["invite"])["virtual_ip"]}
        assert every_pair_pings(party, ips, 60) == set()

        # The device's interface takes the config file's name: unique to this lab run.
        config = lab.workdir / f"{lab.host('switch').wg_name}.conf"
        exported = json.loads(party.cli("alice", "party", "export", "switch", "-o", str(config), "--json",
                                        "--state-dir", party.state("alice")))
        assert "config" not in exported
        assert config.stat().st_mode & 0o777 == 0o600
        text = config.read_text()
        alice = lab.host("alice")
        assert f"Endpoint = {alice.public_ip}:51820" in text  # alice's public address, as STUN saw it
        assert f"Address = {exported['virtual_ip']}/32" in text and "AllowedIPs = 10.66.0.0/16" in text
        private_key = next(line.split("=", 1)[1].strip() for line in text.splitlines()
                           if line.startswith("PrivateKey"))
        device_key = PrivateKey.from_base64(private_key).public_key
        taken = lab.run("alice", [*party.command, "party", "export", "Switch", "--state-dir",
                                  party.state("alice")], check=False)
        assert (taken.returncode, taken.stdout) == (2, "")
        assert taken.stderr.strip().endswith("the name 'Switch' is taken in party "
                                             f"{created['party_id']} (HTTP 409)"), taken.stderr
        refused = lab.run("alice", [*party.command, "party", "export", "tv", "--endpoint", "console:51820",
                                    "--state-dir", party.state("alice")], check=False)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "invalid endpoint 'console:51820'" in refused.stderr

        lab.run("switch", ["wg-quick", "up", str(config)], env=WG_QUICK_ENV, timeout=30)
        device_ip = exported["virtual_ip"]
        wait_until(lambda: devices(party, "bob").get("switch", {}).get("applied"), 30,
                   "bob routes the device through alice")
        everyone = {**ips, "switch": device_ip}
        assert every_pair_pings(party, everyone, 60) == set()

        # Alice reads the device's handshake every 5 s: its state follows within one poll.
        wait_until(lambda: devices(party, "alice")["switch"]["state"] == "connected", 15,
                   "alice sees the device's handshake")
        seen_by_alice = devices(party, "alice")["switch"]
        assert seen_by_alice["routed_here"] is True
        assert seen_by_alice["last_handshake"] and time.time() - seen_by_alice["last_handshake"] < 120
        assert seen_by_alice["endpoint"].startswith(lab.host("switch").public_ip + ":")
        seen_by_bob = devices(party, "bob")["switch"]
        assert (seen_by_bob["via_name"], seen_by_bob["virtual_ip"]) == ("alice", device_ip)
        table = party.cli("bob", "status", "--state-dir", party.state("bob"))
        assert "devices without LANrage" in table and "switch" in table
        for member in ("alice", "bob"):
            history = party.cli(member, "history", "switch", "--state-dir", party.state(member))
            assert "connected" in history, history
        # The device's private key is in its config only: not in a log line, not in an event.
        for member in ("alice", "bob"):
            events = party.cli(member, "events", "--json", "--limit", "100000", "--state-dir",
                               party.state(member))
            assert private_key not in events
            assert private_key not in party.agents[member].output()

        # Alice leaves: the device goes with her, on her WireGuard and in bob's status.
        assert device_key in lab.run("alice", ["wg", "show", alice.wg_name, "peers"]).stdout
        party.leave("alice")
        wait_until(lambda: device_key not in lab.run("alice", ["wg", "show", alice.wg_name, "peers"],
                                                     check=False).stdout, 10, "alice drops the device's peer")
        wait_until(lambda: "switch" not in devices(party, "bob"), 30, "bob forgets the device")
        assert not lab.ping("switch", ips["bob"], count=1, timeout_s=1.0)
        alone = lab.run("alice", [*party.command, "party", "export", "tv", "--state-dir",
                                  party.state("alice")], check=False)
        assert (alone.returncode, alone.stderr.strip()) == (2, "lanrage: this node is in no party (HTTP 404)")
        lab.run("switch", ["wg-quick", "down", str(config)], env=WG_QUICK_ENV, timeout=30, check=False)
