"""The node agent opens no actor-system socket, and nothing it listens on unpickles.

thespian's TCP base listened on every interface and unpickled every frame: anyone who
reached it ran code as root. Here ``serve`` runs in a lab namespace, in a party with a
relayed peer (so relay proxies exist too), and every listening socket of its process
tree is listed and fed a pickle that would create a file if anything unpickled it.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path

import pytest

from demo.party import LabParty
from lab import HostSpec, Lab

pytestmark = pytest.mark.lab

API = "127.0.0.1:8666"
WIREGUARD_PORT = 51820


class Payload:
    """Unpickling this runs a shell command (what an attacker would send)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def listeners(lab: Lab, host: str, pids: set[int]) -> set[tuple[str, str]]:
    """(protocol, local address) of every TCP listener and bound UDP socket of ``pids``."""
    out = lab.run(host, ["ss", "-H", "-l", "-t", "-u", "-n", "-p"]).stdout
    found = set()
    for line in out.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            fields = line.split()
            found.add((fields[0], fields[4]))
    return found


def send_pickle(lab: Lab, host: str, protocol: str, address: str, marker: Path) -> None:
    """Send the pickle raw and length-framed (thespian's framing) from inside ``host``."""
    blob = pickle.dumps(Payload(marker))
    script = (
        "import socket, struct, sys\n"
        "proto, host, port, blob = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])\n"
        "for data in (blob, struct.pack('!I', len(blob)) + blob):\n"
        "    kind = socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM\n"
        "    with socket.socket(socket.AF_INET, kind) as s:\n"
        "        s.settimeout(2)\n"
        "        try:\n"
        "            s.connect((host, port)); s.sendall(data)\n"
        "            if kind == socket.SOCK_STREAM: s.recv(100)\n"
        "        except OSError:\n"
        "            pass\n")
    ip, _, port = address.rpartition(":")
    ip = "127.0.0.1" if ip in ("*", "0.0.0.0") else ip.strip("[]")
    lab.run(host, [sys.executable, "-c", script, protocol, ip, port, blob.hex()], timeout=20)


def test_serve_has_no_actor_listener_and_no_listener_unpickles(require_root: None) -> None:
    hosts = [HostSpec("alice", "open"), HostSpec("bob", "symmetric"), HostSpec("carl", "symmetric")]
    with Lab.build(hosts=hosts, relays=1) as lab:
        party = LabParty(lab)
        party.start_services()
        party.start_agents(["alice", "bob", "carl"])
        invite = party.create("alice", "LAN")["invite"]
        party.join("bob", invite)
        ip = party.join("carl", invite)["virtual_ip"]
        assert party.wait_ping("bob", ip, 30) is not None  # bob and carl: relayed, proxies exist

        tree = process_tree(party.agents["bob"].pid)
        found = listeners(lab, "bob", tree)
        tcp = {address for protocol, address in found if protocol == "tcp"}
        udp = {address for protocol, address in found if protocol == "udp"}
        assert tcp == {API}  # the local API on loopback; no actor system port anywhere
        assert {a for a in udp if not a.startswith("127.0.0.1:")} <= {
            f"0.0.0.0:{WIREGUARD_PORT}", f"*:{WIREGUARD_PORT}", f"[::]:{WIREGUARD_PORT}"}  # wireguard-go
        # The rest are the relay proxies, on loopback.
        assert any(a.startswith("127.0.0.1:") for a in udp), "expected the relay proxies on loopback"

        marker = lab.workdir / "pwned"
        for protocol, address in sorted(found):
            send_pickle(lab, "bob", protocol, address, marker)
        # Also from another host, at every address bob's node has on the lab internet.
        for protocol, address in sorted(found):
            _, _, port = address.rpartition(":")
            send_pickle(lab, "alice", protocol, f"{lab.host('bob').public_ip}:{port}", marker)
        assert party.wait_ping("bob", ip, 10) is not None  # still serving
        assert not marker.exists(), "a listener unpickled what it was sent"
        assert party.agents["bob"].alive
