"""A device without LANrage joins through one member with a stock wg-quick file (mesh.wireguard.quick).

In the lab: two members (alice behind a port-forwarding router, bob behind a
port-restricted cone NAT) with the project's WireGuard backend, and a device behind a
port-restricted NAT that has only `wg-quick` (userspace wireguard-go through
`WG_QUICK_USERSPACE_IMPLEMENTATION`) and the rendered file. alice routes for the
device: the device's only peer is alice with the party's subnet, alice has the
device's /32 and forwards, bob routes the device's /32 through alice. The device pings
every member's virtual IP and they ping it. (Choosing the router member and announcing
the device to the party is the party's part; here the test sets both ends by hand.)
"""

from __future__ import annotations

import contextlib

import pytest

from lab import HostSpec, Lab
from mesh.keys import PrivateKey
from mesh.wireguard import WireGuardInterface
from mesh.wireguard.quick import QuickDevice, QuickRouter, render_quick_config

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
ADDRESSES = {"alice": "10.66.0.1", "bob": "10.66.0.2", "device": "10.66.0.9"}
SUBNET = "10.66.0.0/16"
PORT = 51820
WG_QUICK_ENV = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}


def test_a_wg_quick_device_reaches_every_member_through_its_router() -> None:
    hosts = [HostSpec("alice", "port_forwarded"), HostSpec("bob", "port_restricted"),
             HostSpec("device", "port_restricted")]
    with Lab.build(hosts, relays=0) as lab:
        keys = {name: PrivateKey.generate() for name in ADDRESSES}
        members: list[WireGuardInterface] = []
        config = lab.workdir / f"q{lab.run_id}d.conf"  # wg-quick names the interface after the file
        try:
            for name in ("alice", "bob"):
                members.append(WireGuardInterface.create(
                    keys[name], f"{ADDRESSES[name]}/16", name=lab.host(name).wg_name, listen_port=PORT,
                    netns=lab.host(name).netns, implementation="userspace"))
            alice, bob = members
            alice_endpoint = f"{lab.host('alice').public_ip}:{PORT}"
            alice.configure_peer(keys["bob"].public_key, None, [f"{ADDRESSES['bob']}/32"])
            alice.configure_peer(keys["device"].public_key, None, [f"{ADDRESSES['device']}/32"])
            bob.configure_peer(keys["alice"].public_key, alice_endpoint,
                               [f"{ADDRESSES['alice']}/32", f"{ADDRESSES['device']}/32"])
            lab.run("alice", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])

            config.write_text(render_quick_config(
                QuickDevice(keys["device"], f"{ADDRESSES['device']}/32", name="device"),
                QuickRouter(keys["alice"].public_key, alice_endpoint, (SUBNET,), name="alice"),
                party="lab"))
            config.chmod(0o600)
            lab.run("device", ["wg-quick", "up", str(config)], env=WG_QUICK_ENV, timeout=30)

            for member in ("alice", "bob"):
                assert lab.ping("device", ADDRESSES[member], count=3, timeout_s=10), f"device -> {member}"
            for member in ("alice", "bob"):
                assert lab.ping(member, ADDRESSES["device"], count=3, timeout_s=10), f"{member} -> device"
            shown = lab.run("device", ["wg", "show", config.stem, "dump"]).stdout.splitlines()
            assert len(shown) == 2 and shown[1].split("\t")[0] == keys["alice"].public_key
        finally:
            with contextlib.suppress(Exception):
                lab.run("device", ["wg-quick", "down", str(config)], env=WG_QUICK_ENV, timeout=30,
                        check=False)
            for member in members:
                member.close()
