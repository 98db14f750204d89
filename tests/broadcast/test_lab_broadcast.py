"""Broadcast emulation on real WireGuard between lab hosts behind NAT routers."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import HostSpec, Lab, LabProcess
from mesh.keys import generate_keypair
from mesh.wireguard import WireGuardInterface

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
GAME = [sys.executable, str(Path(__file__).with_name("game.py"))]
HOSTS = ("alice", "bob", "carol")
VIPS = {"alice": "10.66.7.1", "bob": "10.66.7.2", "carol": "10.66.7.3"}
WG_PORT = 51820
GAME_PORT = 4445
GROUP = "239.255.255.250"
LISTEN_CAP_S = 20.0  # listeners are stopped (SIGTERM) 1 s after the sender is done
SPORT = 40123  # a client's own port, when the game's port is taken by its server


@dataclass
class Mesh:
    lab: Lab
    interfaces: dict[str, WireGuardInterface]
    emulators: dict[str, LabProcess]

    def peers_file(self, host: str) -> Path:
        return self.lab.workdir / f"bc-{host}.peers"

    def counters(self, host: str) -> dict[str, int]:
        path = self.lab.workdir / f"bc-{host}.json"
        path.unlink(missing_ok=True)
        os.kill(self.emulators[host].pid, signal.SIGUSR1)
        self.lab.wait_for(path.exists, 5, what=f"{host} counters")
        return json.loads(path.read_text())

    def set_peers(self, host: str, peers: list[str]) -> None:
        self.peers_file(host).write_text("".join(f"{VIPS[p]}\n" for p in peers))
        path = self.lab.workdir / f"bc-{host}.json"
        path.unlink(missing_ok=True)
        os.kill(self.emulators[host].pid, signal.SIGHUP)
        self.lab.wait_for(path.exists, 5, what=f"{host} peers reloaded")


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    # dave shares alice's LAN and router but is not in the mesh.
    specs = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
             HostSpec("carol", "open"), HostSpec("dave", "port_restricted", lan="alice")]
    with Lab.build(specs, relays=0, stun=False) as lab:
        keys = {host: generate_keypair()[0] for host in HOSTS}
        interfaces: dict[str, WireGuardInterface] = {}
        emulators: dict[str, LabProcess] = {}
        try:
            for host in HOSTS:
                interfaces[host] = WireGuardInterface.create(keys[host], f"{VIPS[host]}/16",
                                                             name=lab.host(host).wg_name, listen_port=WG_PORT,
                                                             netns=lab.host(host).netns)
            for host, other in itertools.permutations(HOSTS, 2):
                endpoint = f"{lab.host(other).public_ip}:{WG_PORT}"
                interfaces[host].configure_peer(keys[other].public_key, endpoint, [f"{VIPS[other]}/32"])
            for host, other in itertools.permutations(HOSTS, 2):
                lab.wait_for(lambda h=host, o=other: lab.ping(h, VIPS[o], count=1, timeout_s=1), 20,
                             what=f"{host} -> {other} through the tunnel")
            built = Mesh(lab, interfaces, emulators)
            for host in HOSTS:
                built.peers_file(host).write_text("")
                proc = lab.popen(host, [sys.executable, "-m", "mesh.broadcast", "--interface",
                                        lab.host(host).wg_name, "--virtual-ip", VIPS[host],
                                        "--ports", f"{GAME_PORT},{GAME_PORT + 1}", "--groups", GROUP,
                                        "--peers-file", str(built.peers_file(host)),
                                        "--counters-file", str(lab.workdir / f"bc-{host}.json")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                line = proc.popen.stdout.readline()
                assert line, f"{host}: emulator did not start: {proc.popen.stderr.read()}"
                emulators[host] = proc
            yield built
        finally:
            for proc in emulators.values():
                if proc.alive:
                    proc.popen.send_signal(signal.SIGTERM)
                    proc.wait(timeout=5)
            for interface in interfaces.values():
                interface.close()


def _heard(proc: LabProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]


def _listen(lab: Lab, host: str, seconds: float, *extra: str, port: int = GAME_PORT) -> LabProcess:
    proc = lab.popen(host, [*GAME, "listen", str(port), str(seconds), *extra])
    lab.wait_udp_listening(host, port)
    return proc


def _send(lab: Lab, host: str, dst: str, count: int, tag: str, reply_window: float,
          port: int = GAME_PORT, sport: int | None = None) -> list[dict[str, object]]:
    argv = [*GAME, "send", dst, str(port), str(count), tag, str(reply_window), "--sport", str(sport or port)]
    out = lab.run(host, argv, timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines()]


def _finish(lab: Lab, procs: list[LabProcess], grace_s: float = 1.0) -> None:
    """The listening window ends `grace_s` after the last send: late copies and duplicates
    would have arrived by then (one-way latency is ~1-10 ms)."""
    time.sleep(grace_s)
    for proc in procs:
        if proc.alive:
            proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.output()


def test_a_broadcast_reaches_only_peers_once_and_the_reply_comes_back(mesh: Mesh) -> None:
    lab = mesh.lab
    mesh.set_peers("alice", ["bob"])  # carol has a tunnel to alice but is not a broadcast peer
    mesh.set_peers("bob", ["alice"])
    mesh.set_peers("carol", [])
    before = {host: mesh.counters(host) for host in HOSTS}
    listeners = {host: _listen(lab, host, LISTEN_CAP_S, "--reply") for host in ("bob", "carol", "dave")}
    heard_by_alice = _send(lab, "alice", "255.255.255.255", 5, "T1", 2.0)
    _finish(lab, list(listeners.values()))
    expected = {f"T1 {i}" for i in range(5)}

    bob = _heard(listeners["bob"])
    assert sorted(m["data"] for m in bob) == sorted(expected)  # each exactly once, payload intact
    assert {(m["src"], m["sport"]) for m in bob} == {(VIPS["alice"], GAME_PORT)}  # the origin's own address
    replies = [m for m in heard_by_alice if str(m["data"]).startswith("REPLY")]
    # dave is alice's LAN neighbour: he hears her broadcast natively and answers too.
    from_bob = [m for m in replies if m["src"] == VIPS["bob"]]
    assert sorted(m["data"] for m in from_bob) == sorted(f"REPLY {d}" for d in expected)
    assert {m["sport"] for m in from_bob} == {GAME_PORT}
    assert _heard(listeners["carol"]) == []
    dave = _heard(listeners["dave"])
    assert sorted(m["data"] for m in dave) == sorted(expected)
    assert {m["src"] for m in dave} == {lab.host("alice").lan_ip}

    delta = _delta(mesh, before)
    assert delta["alice"]["captured"] == 5 and delta["alice"]["forwarded"] == 5
    assert delta["bob"]["received"] == 5 and delta["bob"]["reemitted"] == 5
    assert delta["bob"]["captured"] == 0 and delta["bob"]["forwarded"] == 0  # no loop back to alice
    assert delta["alice"]["received"] == 0 and delta["carol"]["received"] == 0
    assert delta["carol"]["dropped_not_peer"] == 0  # alice never even sent to carol


def test_a_broadcast_to_the_lans_own_subnet_reaches_peers_as_a_limited_broadcast(mesh: Mesh) -> None:
    lab = mesh.lab
    _full_mesh(mesh)
    lan = ipaddress.IPv4Network(f"{lab.host('alice').lan_ip}/29", strict=False)  # the lab's LANs are /29
    listeners = {host: _listen(lab, host, LISTEN_CAP_S) for host in ("bob", "dave")}
    _send(lab, "alice", str(lan.broadcast_address), 2, "DIR", 0.1, sport=SPORT)
    _finish(lab, list(listeners.values()))
    bob = _heard(listeners["bob"])
    assert sorted(m["data"] for m in bob) == ["DIR 0", "DIR 1"]
    assert {(m["src"], m["sport"]) for m in bob} == {(VIPS["alice"], SPORT)}
    assert sorted(m["data"] for m in _heard(listeners["dave"])) == ["DIR 0", "DIR 1"]  # natively, on the LAN


def _delta(mesh: Mesh, before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    after = {host: mesh.counters(host) for host in HOSTS}
    return {host: {k: v - before[host][k] for k, v in after[host].items() if k != "peers"} for host in HOSTS}


def _full_mesh(mesh: Mesh) -> None:
    for host in HOSTS:
        mesh.set_peers(host, [other for other in HOSTS if other != host])


def test_three_hosts_subnet_and_limited_broadcast_each_once_nothing_leaks(mesh: Mesh) -> None:
    lab = mesh.lab
    _full_mesh(mesh)
    before = {host: mesh.counters(host) for host in HOSTS}
    listeners = {host: _listen(lab, host, LISTEN_CAP_S) for host in (*HOSTS, "dave")}
    _send(lab, "carol", "10.66.255.255", 3, "SUB", 0.1, sport=SPORT)  # the virtual subnet's broadcast
    # carol is an `open` lab host without a default route: there 255.255.255.255 is
    # unreachable for any program (ENETUNREACH), so bob sends the limited broadcast.
    _send(lab, "bob", "255.255.255.255", 2, "LIM", 0.1, sport=SPORT)
    _finish(lab, list(listeners.values()))
    sub, lim = ["SUB 0", "SUB 1", "SUB 2"], ["LIM 0", "LIM 1"]
    expected = {"alice": {"carol": sub, "bob": lim}, "bob": {"carol": sub}, "carol": {"bob": lim}}
    for host, senders in expected.items():
        heard = [m for m in _heard(listeners[host]) if m["src"] != VIPS[host] and m["src"] in VIPS.values()]
        by_sender = {other: sorted(m["data"] for m in heard if m["src"] == VIPS[other]) for other in senders}
        assert by_sender == senders, host  # each exactly once, nothing from anywhere else
        assert {m["sport"] for m in heard} == {SPORT}
    # Re-emitted copies stay on the host: alice's LAN neighbour hears nothing of carol's or bob's.
    assert _heard(listeners["dave"]) == []
    delta = _delta(mesh, before)
    assert (delta["carol"]["captured"], delta["carol"]["forwarded"]) == (3, 6)
    assert (delta["bob"]["captured"], delta["bob"]["forwarded"]) == (2, 4)
    assert (delta["alice"]["captured"], delta["alice"]["forwarded"]) == (0, 0)  # nothing forwarded on
    assert [delta[h]["reemitted"] for h in HOSTS] == [5, 3, 2]
    assert all(delta[h]["dropped_duplicate"] == 0 for h in HOSTS)


def test_multicast_group_and_unconfigured_ports(mesh: Mesh) -> None:
    lab = mesh.lab
    _full_mesh(mesh)
    port = GAME_PORT + 1
    joined = lab.popen("bob", [*GAME, "join", GROUP, str(port), str(LISTEN_CAP_S)])
    lab.wait_udp_listening("bob", port)
    other_port = lab.popen("carol", [*GAME, "listen", str(GAME_PORT + 2), str(LISTEN_CAP_S)])
    lab.wait_udp_listening("carol", GAME_PORT + 2)
    time.sleep(0.2)  # the IGMP join is done before bind returns; this is only for the listener's loop
    _send(lab, "alice", GROUP, 3, "SSDP", 0.1, port=port)
    _send(lab, "alice", "255.255.255.255", 3, "OTHER", 0.1, port=GAME_PORT + 2)
    _finish(lab, [joined, other_port])
    heard = _heard(joined)
    assert sorted(m["data"] for m in heard) == ["SSDP 0", "SSDP 1", "SSDP 2"]
    assert {(m["src"], m["sport"]) for m in heard} == {(VIPS["alice"], port)}
    assert _heard(other_port) == []  # 4447 is not a configured game port


def test_a_node_in_two_parties_reaches_a_peer_that_knows_it_by_its_second_address() -> None:
    """alice's interface holds 10.66.10.1/16 (first party) and 10.66.11.1/32 (second party);
    bob is in the second party only, so his WireGuard accepts alice only as 10.66.11.1."""
    with Lab.build([HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded")], relays=0,
                   stun=False) as lab:
        keys = {host: generate_keypair()[0] for host in ("alice", "bob")}
        address = {"alice": "10.66.10.1/16", "bob": "10.66.11.2/16"}
        known_as = {"alice": "10.66.11.1", "bob": "10.66.11.2"}
        interfaces = {host: WireGuardInterface.create(keys[host], address[host], name=lab.host(host).wg_name,
                                                      listen_port=WG_PORT, netns=lab.host(host).netns)
                      for host in ("alice", "bob")}
        try:
            lab.run("alice", ["ip", "address", "add", "10.66.11.1/32", "dev", lab.host("alice").wg_name])
            for host, other in (("alice", "bob"), ("bob", "alice")):
                endpoint = f"{lab.host(other).public_ip}:{WG_PORT}"
                interfaces[host].configure_peer(keys[other].public_key, endpoint, [f"{known_as[other]}/32"])
            lab.wait_for(lambda: lab.run("alice", ["ping", "-c", "1", "-W", "1", "-I", "10.66.11.1",
                                                   "10.66.11.2"], check=False).returncode == 0, 20)
            emulators = {}
            for host, peers in (("alice", "10.66.11.2 10.66.11.1\n"), ("bob", "10.66.11.1\n")):
                (lab.workdir / f"{host}.peers").write_text(peers)
                emulators[host] = lab.popen(host, [
                    sys.executable, "-m", "mesh.broadcast", "--interface", lab.host(host).wg_name,
                    "--virtual-ip", address[host].split("/")[0], "--ports", str(GAME_PORT),
                    "--peers-file", str(lab.workdir / f"{host}.peers"),
                    "--counters-file", str(lab.workdir / f"{host}.json")], stdout=subprocess.PIPE, text=True)
                assert emulators[host].popen.stdout.readline()
            listener = _listen(lab, "bob", LISTEN_CAP_S, "--reply")
            heard_by_alice = _send(lab, "alice", "255.255.255.255", 3, "P2", 1.0, sport=SPORT)
            _finish(lab, [listener])
            heard = _heard(listener)
            assert sorted(m["data"] for m in heard) == ["P2 0", "P2 1", "P2 2"]
            assert {(m["src"], m["sport"]) for m in heard} == {("10.66.11.1", SPORT)}
            replies = sorted(m["data"] for m in heard_by_alice if m["src"] == "10.66.11.2")
            assert replies == ["REPLY P2 0", "REPLY P2 1", "REPLY P2 2"]
            for proc in emulators.values():
                proc.popen.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=5) == 0
        finally:
            for interface in interfaces.values():
                interface.close()
