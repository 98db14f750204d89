"""The lab itself: topology, NAT behaviour, fault injection, teardown and leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import HostSpec, Lab, LabError, cleanup_leftovers, registry
from lab.shell import list_netns

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]
UDP_TOOL = [sys.executable, str(Path(__file__).with_name("udp_tool.py"))]


@pytest.fixture(scope="module")
def nat_lab() -> Iterator[Lab]:
    with Lab.build([HostSpec("alice", "port_restricted"), HostSpec("bob", "symmetric"),
                    HostSpec("carol", "open"), HostSpec("dave", "port_forwarded", forward_port=40000)],
                   relays=2) as lab:
        yield lab


def _namespaces(run_id: str) -> list[str]:
    return registry.run_namespaces(run_id)


def test_every_host_reaches_the_internet_and_nothing_else(nat_lab: Lab) -> None:
    for name in ("alice", "bob", "carol", "dave"):
        assert nat_lab.ping(name, nat_lab.control.public_ip, count=1)
        assert nat_lab.ping(name, nat_lab.host("relay2").public_ip, count=1)
    result = nat_lab.run("alice", ["ping", "-c", "1", "-W", "1", "192.0.2.1"], check=False)
    assert result.returncode != 0  # no route out of the lab
    assert nat_lab.host("alice").lan_ip != nat_lab.host("alice").public_ip
    assert nat_lab.host("carol").lan_ip == nat_lab.host("carol").public_ip


def test_unsolicited_inbound_is_dropped_except_open_and_forwarded(nat_lab: Lab) -> None:
    names = ("alice", "bob", "carol", "dave")
    listeners = {name: nat_lab.popen(name, [*UDP_TOOL, "listen", "40000", "4"]) for name in names}
    for name in names:
        nat_lab.wait_udp_listening(name, 40000)
    for name in names:
        nat_lab.run("control", [*UDP_TOOL, "send", f"{nat_lab.host(name).public_ip}:40000", "3"])
    received = {name: listener.wait(timeout=10) == 0 for name, listener in listeners.items()}
    assert received == {"alice": False, "bob": False, "carol": True, "dave": True}


def test_mapping_is_stable_behind_cone_and_varies_behind_symmetric(nat_lab: Lab) -> None:
    relays = [f"{relay.public_ip}:3500" for relay in nat_lab.relays]
    for relay in nat_lab.relays:
        nat_lab.popen(relay.name, [*UDP_TOOL, "reflect", "3500", "20"])
    for relay in nat_lab.relays:
        nat_lab.wait_udp_listening(relay.name, 3500)
    mappings = {}
    for name in ("alice", "bob"):
        out = nat_lab.run(name, [*UDP_TOOL, "probe", "1", "41000", *relays]).stdout.split()
        assert len(out) == 2, out
        assert all(line.startswith(nat_lab.host(name).public_ip + ":") for line in out)
        mappings[name] = set(out)
    assert len(mappings["alice"]) == 1  # endpoint-independent mapping
    assert len(mappings["bob"]) == 2  # a new port for every destination


def test_stun_server_stops_and_starts(nat_lab: Lab) -> None:
    def listening() -> bool:
        return bool(nat_lab.run("stun", ["ss", "-Hnlu", "sport = :3478"]).stdout.strip())

    nat_lab.stop_stun()
    try:
        assert not listening()
    finally:
        nat_lab.start_stun()
    assert listening()  # and the next test classifies a NAT with it


def test_stund_classifies_the_symmetric_router(nat_lab: Lab) -> None:
    code = ("import stun; print(stun.get_ip_info('0.0.0.0', 54320, '203.0.113.2', 3478))")
    out = nat_lab.run("bob", [sys.executable, "-c", code], timeout=30).stdout
    assert "Symmetric NAT" in out and nat_lab.host("bob").public_ip in out


def test_nat_rebinding_maps_onto_new_ports(nat_lab: Lab) -> None:
    relay = nat_lab.relays[0]
    nat_lab.popen(relay.name, [*UDP_TOOL, "reflect", "3501", "20"])
    nat_lab.wait_udp_listening(relay.name, 3501)
    seen: dict[str, list[str]] = {"alice": [], "dave": []}
    for _ in range(3):
        for name in seen:
            probe = [*UDP_TOOL, "probe", "1", "41001", f"{relay.public_ip}:3501"]
            out = nat_lab.run(name, probe).stdout.split()
            assert len(out) == 1 and out[0].startswith(nat_lab.host(name).public_ip + ":"), out
            seen[name].append(out[0])
            nat_lab.rebind_nat(name)
    assert all(len(set(mappings)) == 3 for mappings in seen.values()), seen  # a new port every time
    with pytest.raises(LabError):
        nat_lab.rebind_nat("carol")  # open: no NAT


def test_cut_and_restore_uplink(nat_lab: Lab) -> None:
    target = nat_lab.control.public_ip
    nat_lab.cut_uplink("alice")
    try:
        assert not nat_lab.ping("alice", target, count=1, timeout_s=1)
        assert nat_lab.ping("bob", target, count=1)
    finally:
        nat_lab.restore_uplink("alice")
    assert nat_lab.ping("alice", target, count=2, timeout_s=4)


def test_loss_is_random_and_removable(nat_lab: Lab) -> None:
    target = nat_lab.control.public_ip
    nat_lab.add_loss("carol", 1.0)
    assert not nat_lab.ping("carol", target, count=2, timeout_s=1)
    nat_lab.add_loss("carol", 0.3)  # each direction: about 51% of round trips are lost
    out = nat_lab.run("carol", ["ping", "-n", "-q", "-c", "100", "-i", "0.01", "-W", "1", target],
                      check=False, timeout=20).stdout
    received = int(out.split(" received")[0].rsplit(" ", 1)[1])
    assert 20 <= received <= 80, out
    nat_lab.clear_loss("carol")
    assert nat_lab.ping("carol", target, count=3)
    with pytest.raises(LabError):
        nat_lab.add_loss("carol", 1.5)


def test_block_and_unblock_a_direct_path(nat_lab: Lab) -> None:
    carol = nat_lab.host("carol").public_ip
    nat_lab.block_path("alice", "carol")
    nat_lab.block_path("alice", "carol")  # idempotent
    try:
        assert not nat_lab.ping("alice", carol, count=1, timeout_s=1)
        assert not nat_lab.ping("carol", nat_lab.host("alice").lan_ip, count=1, timeout_s=1)
        assert nat_lab.ping("alice", nat_lab.control.public_ip, count=1)
        assert nat_lab.ping("bob", carol, count=1)
    finally:
        nat_lab.unblock_path("alice", "carol")
    assert nat_lab.ping("alice", carol, count=2, timeout_s=3)


def test_hosts_on_one_lan_share_a_router() -> None:
    specs = [HostSpec("ann", "symmetric", lan="home"), HostSpec("cat", "open"),
             HostSpec("ben", "symmetric", lan="home")]
    with Lab.build(specs, relays=0, stun=False) as lab:
        ann, ben = lab.host("ann"), lab.host("ben")
        assert ann.public_ip == ben.public_ip and ann.router_netns == ben.router_netns
        assert ann.lan_ip != ben.lan_ip and ann.lan == ben.lan == "home"
        assert len(_namespaces(lab.run_id)) == 6  # inet, control, ann, ben, cat, home-gw
        assert lab.ping("ann", ben.lan_ip, count=1)  # straight across the LAN
        assert lab.ping("ben", lab.host("cat").public_ip, count=1)
        lab.cut_uplink("ann")  # the shared router's cable: ben loses the internet too
        assert not lab.ping("ben", lab.control.public_ip, count=1, timeout_s=1)
        assert lab.ping("ben", ann.lan_ip, count=1)
        lab.restore_uplink("ann")
        with pytest.raises(LabError, match="share a router"):
            lab.block_path("ann", "ben")
    for bad in ([HostSpec("a", lan="x"), HostSpec("b", "symmetric", lan="x")],
                [HostSpec("a", "open", lan="x")],
                [HostSpec("a", lan="b"), HostSpec("b", "open")],
                [HostSpec(f"h{i}", lan="x") for i in range(6)]):
        with pytest.raises(LabError):
            Lab.build(bad)


def test_kill_and_restart_a_process(nat_lab: Lab) -> None:
    proc = nat_lab.popen("relay1", ["sleep", "30"])
    assert proc.alive
    assert nat_lab.kill(proc) == -signal.SIGKILL
    again = nat_lab.restart(proc)
    assert again.alive and again.pid != proc.pid and again.argv == proc.argv
    nat_lab.kill(again, signal.SIGTERM)
    assert not again.alive


def test_unknown_host_and_bad_specs_are_clear_errors(nat_lab: Lab) -> None:
    with pytest.raises(LabError, match="no host 'zed'"):
        nat_lab.run("zed", ["true"])
    for bad in ([HostSpec("Alice")], [HostSpec("relay1")], [HostSpec("x", "cone")], ["a", "a"]):
        with pytest.raises(LabError):
            Lab.build(bad)


def test_teardown_removes_namespaces_processes_and_record() -> None:
    with Lab.build(["solo"], relays=1) as lab:
        names = _namespaces(lab.run_id)
        assert len(names) == 6  # inet, stun, control, relay1, solo, solo-gw
        sleeper = lab.popen("solo", ["sleep", "30"])
        # A process the lab did not start itself, e.g. a daemonised wireguard-go.
        lab.run("solo", ["sh", "-c", "setsid sleep 31 >/dev/null 2>&1 &"])
        stray = [int(p) for p in subprocess.run(["ip", "netns", "pids", lab.host("solo").netns],
                                                capture_output=True, text=True).stdout.split()]
        record_path = lab.record.path
        assert record_path.exists()
        # A SIGKILLed wireguard-go leaves its UAPI socket behind (its link goes with it).
        wg_name = lab.host("solo").wg_name
        socket_path = Path(f"/var/run/wireguard/{wg_name}.sock")
        wg = lab.popen("solo", ["wireguard-go", wg_name], env={"WG_PROCESS_FOREGROUND": "1"})
        lab.wait_for(socket_path.exists, 5, what="wireguard-go socket")
        lab.kill(wg)
        assert socket_path.exists()
    assert not socket_path.exists()
    assert _namespaces(lab.run_id) == []
    assert not record_path.exists()
    assert not lab.workdir.exists()
    assert sleeper.returncode is not None
    for pid in stray:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_teardown_runs_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError), Lab.build(["solo"], relays=0, stun=False) as lab:
        raise RuntimeError("boom")
    assert _namespaces(lab.run_id) == []


def _lab_owner(body: str) -> tuple[subprocess.Popen[str], str]:
    code = ("import sys, time\nfrom lab import Lab\n"
            "lab = Lab.build(['zed'], relays=0, stun=False)\n" + body)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert run_id, "the lab owner did not start"
    return proc, run_id


def test_sigterm_tears_the_lab_down() -> None:
    proc, run_id = _lab_owner("with lab:\n    print(lab.run_id, flush=True)\n    time.sleep(30)\n")
    assert _namespaces(run_id)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 128 + signal.SIGTERM
    assert _namespaces(run_id) == []
    assert registry.load(run_id) is None


def test_leftovers_of_dead_runs_go_and_live_labs_stay() -> None:
    proc, run_id = _lab_owner("print(lab.run_id, flush=True)\ntime.sleep(30)\n")
    try:
        assert run_id not in cleanup_leftovers()  # its owner is alive: someone else's lab
        assert len(_namespaces(run_id)) == 4
        proc.kill()  # no chance to clean up
        proc.wait(timeout=10)
        assert len(_namespaces(run_id)) == 4
        assert run_id in cleanup_leftovers()
        assert _namespaces(run_id) == []
        assert registry.load(run_id) is None
    finally:
        proc.kill()
        proc.wait(timeout=10)
        cleanup_leftovers()


def test_namespace_without_a_record_is_a_leftover() -> None:
    orphan = f"{registry.NETNS_PREFIX}0rphan-x"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    assert "0rphan" in cleanup_leftovers()
    assert orphan not in list_netns()


def test_cli_up_list_exec_down(capfd: pytest.CaptureFixture[str]) -> None:
    from cli import main

    assert main(["lab", "up", "-H", "ann:open", "--relays", "0"]) == 0
    run_id = capfd.readouterr().out.split()[1]
    try:
        assert main(["lab", "list"]) == 0
        assert run_id in capfd.readouterr().out
        assert run_id not in cleanup_leftovers()  # its owner exited, but it is persistent
        assert Lab.attach(run_id).host("ann").nat == "open"
        assert main(["lab", "up", "-H", "x:cone"]) == 2
        assert "unknown NAT type" in capfd.readouterr().err
        assert main(["lab", "down"]) != 0
        assert main(["lab", "down", "nosuchrun"]) == 2
        assert "no lab with run id 'nosuchrun'" in capfd.readouterr().err
        result = subprocess.run([sys.executable, "cli.py", "lab", "exec", run_id, "ann", "--",
                                 "ping", "-c", "1", "-W", "1", "203.0.113.10"],
                                cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                                timeout=20)
        assert result.returncode == 0, result.stderr
    finally:
        assert main(["lab", "down", run_id]) == 0
    assert _namespaces(run_id) == []
    assert os.path.exists(registry.state_dir())
