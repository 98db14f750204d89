"""The backend on real wireguard-go through real NAT routers in the lab."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import HostSpec, Lab, LabProcess
from mesh.keys import PrivateKey, generate_keypair, write_private_key
from mesh.wireguard import (
    InterfaceExistsError,
    InvalidConfigError,
    InvalidEndpointError,
    InvalidKeyError,
    PeerConfig,
    PortInUseError,
    WireGuardError,
    WireGuardGoMissingError,
    WireGuardInterface,
)
from mesh.wireguard.device import uapi_socket_path

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
REPO = Path(__file__).resolve().parents[2]
WG_NODE = [sys.executable, str(Path(__file__).with_name("wg_node.py"))]
PORT = 51820
CONNECT_TIMEOUT_S = 20.0
_names = itertools.count()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab.build([HostSpec("alice", "port_restricted"), HostSpec("bob", "port_restricted"),
                    HostSpec("carol", "port_restricted")], relays=0, stun=False) as built:
        yield built


def _name(lab: Lab) -> str:
    return f"t{lab.run_id}n{next(_names)}"


def _wg_dump(lab: Lab, host: str, name: str) -> tuple[list[str], dict[str, list[str]]]:
    """`wg show NAME dump`: an independent reader of the device."""
    lines = [line.split("\t") for line in lab.run(host, ["wg", "show", name, "dump"]).stdout.splitlines()]
    return lines[0], {fields[0]: fields for fields in lines[1:]}


def _link(lab: Lab, host: str, name: str) -> dict:
    out = lab.run(host, ["ip", "-j", "addr", "show", "dev", name], check=False)
    return json.loads(out.stdout)[0] if out.returncode == 0 else {}


def _assert_nothing_left(lab: Lab, host: str, name: str) -> None:
    assert _link(lab, host, name) == {}, f"{name} left behind in {host}"
    assert not uapi_socket_path(name).exists(), f"{name}.sock left behind"


def _start_node(lab: Lab, host: str, name: str, address: str, key: PrivateKey,
                peers: list[dict[str, object]]) -> tuple[LabProcess, dict]:
    state = lab.workdir / f"state-{name}"
    write_private_key(state / "wireguard.key", key)
    proc = lab.popen(host, [*WG_NODE, name, address, str(PORT), str(state / "wireguard.key"), str(state),
                            json.dumps(peers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.popen.stdout.readline()
    assert line, f"{host}: node did not start: {proc.popen.stderr.read()}"
    return proc, json.loads(line)


def _ping_until(lab: Lab, host: str, ip: str) -> None:
    # Both sides send (endpoints + keepalive), so both NATs open; wait a bounded time.
    lab.wait_for(lambda: lab.ping(host, ip, count=1, timeout_s=1), CONNECT_TIMEOUT_S,
                 what=f"{host} reaching {ip} through the tunnel")


def test_two_hosts_behind_port_restricted_nats_ping_over_the_tunnel(lab: Lab) -> None:
    """Each node runs inside its namespace (the agent's way), configured with known endpoints."""
    keys = {host: generate_keypair()[0] for host in ("alice", "bob")}
    vips = {"alice": "10.66.0.1", "bob": "10.66.0.2"}
    names = {host: _name(lab) for host in keys}
    nodes = {}
    for host, other in (("alice", "bob"), ("bob", "alice")):
        peers = [{"public_key": keys[other].public_key, "endpoint": f"{lab.host(other).public_ip}:{PORT}",
                  "allowed_ips": [f"{vips[other]}/32"]}]
        nodes[host] = _start_node(lab, host, names[host], f"{vips[host]}/16", keys[host], peers)
    _ping_until(lab, "alice", vips["bob"])
    _ping_until(lab, "bob", vips["alice"])
    link = _link(lab, "alice", names["alice"])
    assert link["mtu"] == 1420 and "UP" in link["flags"]
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.66.0.1"]
    _, peers = _wg_dump(lab, "alice", names["alice"])
    bob = peers[keys["bob"].public_key]
    assert bob[2] == f"{lab.host('bob').public_ip}:{PORT}" and bob[3] == "10.66.0.2/32" and bob[7] == "25"
    assert int(bob[4]) > 0 and int(bob[5]) > 0 and int(bob[6]) > 0
    for host, (proc, _info) in nodes.items():
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _assert_nothing_left(lab, host, names[host])


def test_three_hosts_full_mesh(lab: Lab) -> None:
    hosts = ("alice", "bob", "carol")
    keys = {host: generate_keypair()[0] for host in hosts}
    vips = {host: f"10.66.1.{index + 1}" for index, host in enumerate(hosts)}
    interfaces = {host: WireGuardInterface.create(keys[host], f"{vips[host]}/16", name=_name(lab),
                                                  listen_port=PORT, netns=lab.host(host).netns)
                  for host in hosts}
    try:
        for host, other in itertools.permutations(hosts, 2):
            interfaces[host].configure_peer(keys[other].public_key, f"{lab.host(other).public_ip}:{PORT}",
                                            [f"{vips[other]}/32"])
        for host, other in itertools.permutations(hosts, 2):
            _ping_until(lab, host, vips[other])
        for host, other in itertools.permutations(hosts, 2):
            stats = interfaces[host].peer_stats()[keys[other].public_key]
            assert stats.last_handshake is not None and stats.rx_bytes > 0 and stats.tx_bytes > 0
            assert stats.endpoint == f"{lab.host(other).public_ip}:{PORT}"
        # Removing a peer cuts exactly that path.
        interfaces["alice"].remove_peer(keys["carol"].public_key)
        interfaces["alice"].remove_peer(keys["carol"].public_key)  # idempotent
        assert not lab.ping("alice", vips["carol"], count=1, timeout_s=1)
        assert lab.ping("alice", vips["bob"], count=1)
    finally:
        for interface in interfaces.values():
            interface.close()
    for host, interface in interfaces.items():
        _assert_nothing_left(lab, host, interface.name)


def _fake_peer(index: int, endpoint_host: int, keepalive: int = 25) -> PeerConfig:
    return PeerConfig.make(generate_keypair()[1], f"203.0.113.{endpoint_host}:{40000 + index}",
                           [f"10.66.2.{index}/32"], keepalive)


def test_reconcile_makes_a_drifted_interface_exactly_the_desired_one(lab: Lab) -> None:
    name = _name(lab)
    netns = lab.host("alice").netns
    key = PrivateKey.generate()
    p1, p2, p3, p5 = (_fake_peer(i, 200 + i) for i in (1, 2, 3, 5))
    with WireGuardInterface.create(key, "10.66.2.100/16", name=name, listen_port=PORT, netns=netns,
                                   state_dir=lab.workdir / f"state-{name}") as wg:
        assert wg.reconcile([p1, p2, p3, p5]).added
        foreign = generate_keypair()[1]
        lab.run("alice", ["wg", "set", name, "peer", foreign, "allowed-ips", "10.66.9.9/32"])
        # Drift: a peer removed, one rewritten, one's keepalive changed, link settings broken.
        lab.run("alice", ["wg", "set", name, "peer", p1.public_key, "remove"])
        lab.run("alice", ["wg", "set", name, "peer", p2.public_key, "endpoint", "203.0.113.99:1",
                          "allowed-ips", "10.66.3.3/32"])
        lab.run("alice", ["wg", "set", name, "peer", p3.public_key, "persistent-keepalive", "off"])
        lab.run("alice", ["ip", "addr", "flush", "dev", name])
        lab.run("alice", ["ip", "addr", "add", "10.66.77.77/16", "dev", name])
        lab.run("alice", ["ip", "link", "set", name, "mtu", "1300", "down"])
        p4 = _fake_peer(4, 204)
        desired = [p1, p2, p3, p4]  # p5 is ours and no longer wanted
        report = wg.reconcile(desired)
        assert set(report.added) == {p1.public_key, p4.public_key}
        assert set(report.updated) == {p2.public_key, p3.public_key}
        assert report.removed == (p5.public_key,)
        assert {"address", "mtu", "up"} <= set(report.interface_fixed)

        header, peers = _wg_dump(lab, "alice", name)
        assert header[1] == key.public_key and header[2] == str(PORT)
        expected = {p.public_key: (p.endpoint, ",".join(p.allowed_ips), str(p.keepalive_s)) for p in desired}
        expected[foreign] = ("(none)", "10.66.9.9/32", "off")  # not ours: left alone
        assert {k: (f[2], f[3], f[7]) for k, f in peers.items()} == expected
        link = _link(lab, "alice", name)
        assert link["mtu"] == 1420 and "UP" in link["flags"]
        assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.66.2.100"]
        assert not wg.reconcile(desired).changed  # idempotent
        assert wg.managed_peers == {p.public_key for p in desired}
    _assert_nothing_left(lab, "alice", name)


def test_a_crashed_node_adopts_its_interface_and_a_vanished_one_is_recreated(lab: Lab) -> None:
    name = _name(lab)
    key = PrivateKey.generate()
    peer = {"public_key": generate_keypair()[1], "endpoint": "203.0.113.201:1",
            "allowed_ips": ["10.66.4.1/32"]}
    first, info = _start_node(lab, "bob", name, "10.66.4.100/16", key, [peer])
    lab.kill(first)  # SIGKILL: no cleanup; wireguard-go lives on in its own session
    assert Path(f"/proc/{info['pid']}").exists() and uapi_socket_path(name).exists()
    replacement = {**peer, "public_key": generate_keypair()[1]}
    second, again = _start_node(lab, "bob", name, "10.66.4.100/16", key, [replacement])
    assert again["pid"] == info["pid"]  # adopted, not recreated
    assert again["added"] == 1 and again["removed"] == 1
    _, peers = _wg_dump(lab, "bob", name)
    assert set(peers) == {replacement["public_key"]}
    second.popen.send_signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 0
    _assert_nothing_left(lab, "bob", name)
    assert not Path(f"/proc/{info['pid']}").exists() or "Z" in Path(f"/proc/{info['pid']}/stat").read_text()

    with WireGuardInterface.create(key, "10.66.4.100/16", name=name, netns=lab.host("bob").netns) as wg:
        wg.configure_peer(peer["public_key"], peer["endpoint"], peer["allowed_ips"])
        assert wg.pid is not None and not wg.gone
        os.kill(wg.pid, signal.SIGKILL)
        lab.wait_for(lambda: not wg.alive, 5, what="wireguard-go gone")
        lab.wait_for(lambda: wg.gone, 5, what="the interface known to be gone")
        report = wg.reconcile([PeerConfig.make(peer["public_key"], peer["endpoint"], peer["allowed_ips"])])
        assert "recreated" in report.interface_fixed and report.added == (peer["public_key"],)
        assert set(_wg_dump(lab, "bob", name)[1]) == {peer["public_key"]}
    _assert_nothing_left(lab, "bob", name)


def test_bad_input_gets_clear_errors_and_leaves_nothing(lab: Lab) -> None:
    netns = lab.host("carol").netns
    key = PrivateKey.generate()
    name = _name(lab)
    with WireGuardInterface.create(key, "10.66.5.1/16", name=name, netns=netns) as wg:
        before = wg.read()
        with pytest.raises(InvalidKeyError, match="invalid WireGuard public key"):
            wg.configure_peer("not-a-key", "203.0.113.9:1", ["10.66.5.2/32"])
        with pytest.raises(InvalidEndpointError, match="not an IP address"):
            wg.configure_peer(generate_keypair()[1], "relay.example:51820", ["10.66.5.2/32"])
        with pytest.raises(InvalidEndpointError):
            wg.configure_peer(generate_keypair()[1], "203.0.113.9", ["10.66.5.2/32"])
        with pytest.raises(InvalidKeyError):
            wg.remove_peer("garbage")
        assert wg.read() == before and wg.managed_peers == frozenset()
        # The name is taken: by our own live interface (another key, no record) ...
        with pytest.raises(InterfaceExistsError, match="taken"):
            WireGuardInterface.create(PrivateKey.generate(), "10.66.5.9/16", name=name, netns=netns)
        # ... or by wireguard-go in another namespace (the UAPI socket is global).
        with pytest.raises(InterfaceExistsError):
            WireGuardInterface.create(PrivateKey.generate(), "10.66.5.9/16", name=name,
                                      netns=lab.host("alice").netns)
        assert wg.alive and wg.read() == before  # the existing one is untouched
    _assert_nothing_left(lab, "carol", name)
    with pytest.raises(InterfaceExistsError):
        WireGuardInterface.create(key, "10.66.5.1/16", name="lan0", netns=netns)
    assert _link(lab, "carol", "lan0")  # someone else's link survives

    for kwargs, error, message in (
        ({"wireguard_go": "no-such-wireguard-go", "implementation": "auto"}, WireGuardGoMissingError,
         "install the wireguard-go package"),
        ({"wireguard_go": "/bin/false"}, WireGuardError, "exited with status 1"),
        ({"mtu": 100}, InvalidConfigError, "MTU"),
        ({"address": "10.66.5.1"}, InvalidConfigError, "prefix"),
        ({"name": "-h"}, InvalidConfigError, "interface name"),
        ({"implementation": "kernel"}, WireGuardError, "kernel WireGuard unavailable"),
    ):
        name = _name(lab)
        args = {"name": name, "address": "10.66.5.1/16", **kwargs}
        with pytest.raises(error, match=message):
            WireGuardInterface.create(key, args.pop("address"), netns=netns, **args)
        _assert_nothing_left(lab, "carol", name)


def test_a_taken_listen_port_is_a_clear_error(lab: Lab) -> None:
    udp_tool = str(REPO / "tests/lab/udp_tool.py")
    holder = lab.popen("carol", [sys.executable, udp_tool, "listen", "47000", "30"])
    lab.wait_udp_listening("carol", 47000)
    name = _name(lab)
    with pytest.raises(PortInUseError, match="UDP port 47000 is already in use"):
        WireGuardInterface.create(PrivateKey.generate(), "10.66.8.1/16", name=name, listen_port=47000,
                                  netns=lab.host("carol").netns)
    _assert_nothing_left(lab, "carol", name)
    lab.kill(holder)


def test_not_root_is_a_clear_error(lab: Lab) -> None:
    code = ("from mesh.keys import PrivateKey\nfrom mesh.wireguard import WireGuardInterface, NotRootError\n"
            "try:\n    WireGuardInterface.create(PrivateKey.generate(), '10.66.6.1/16', name='tnoroot0')\n"
            "except NotRootError as e:\n    print('NotRootError:', e)\n")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=30,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
    expected = "NotRootError: creating a WireGuard interface needs root (CAP_NET_ADMIN)"
    assert result.stdout.strip() == expected, result.stderr


def test_peers_added_by_another_process_are_ours_for_reconcile(lab: Lab) -> None:
    name = _name(lab)
    state = lab.workdir / f"state-{name}"
    keep, drop = _fake_peer(1, 201), _fake_peer(2, 202)
    with WireGuardInterface.create(PrivateKey.generate(), "10.66.7.1/16", name=name,
                                   netns=lab.host("alice").netns, state_dir=state) as wg:
        code = ("import sys\nfrom pathlib import Path\nfrom mesh.wireguard import PeerController\n"
                "c = PeerController(sys.argv[1], Path(sys.argv[2]))\n"
                "for key, endpoint, ip in zip(*[iter(sys.argv[3:])] * 3):\n"
                "    c.configure_peer(key, endpoint, [ip])\n"
                "print(c.public_key, c.listen_port, len(c.peer_stats()))\n")
        out = lab.run("alice", [sys.executable, "-c", code, name, str(state),
                                keep.public_key, keep.endpoint or "", keep.allowed_ips[0],
                                drop.public_key, drop.endpoint or "", drop.allowed_ips[0]]).stdout.split()
        assert out == [wg.public_key, str(wg.listen_port), "2"]
        foreign = generate_keypair()[1]
        lab.run("alice", ["wg", "set", name, "peer", foreign, "allowed-ips", "10.66.9.9/32"])
        assert wg.managed_peers == {keep.public_key, drop.public_key}
        report = wg.reconcile([keep])
        assert report.removed == (drop.public_key,) and not report.added and not report.updated
        assert set(_wg_dump(lab, "alice", name)[1]) == {keep.public_key, foreign}
    _assert_nothing_left(lab, "alice", name)
    assert not (state / "wireguard" / f"{name}.json").exists()
