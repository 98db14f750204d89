"""A UDP port held by a wireguard-go of our own (a previous run's, still exiting or left
behind) is taken back; one held by any other program is reported with its PID and name."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from lab.ports import free_port
from mesh.wireguard.port import is_own_wireguard_go, reclaim_port, udp_port_holders

INTERFACE = "lrtest-port0"
HOLD = ("import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
        "print('bound', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n")


@contextmanager
def holder(port: int, seconds: float, as_wireguard_go: bool) -> Iterator[subprocess.Popen[str]]:
    """A process holding ``port``: named like ``wireguard-go INTERFACE`` when ``as_wireguard_go``."""
    if as_wireguard_go:  # argv[0] "wireguard-go", the interface name last, as wireguard-go is started
        # (the system's python: a venv's finds its library through argv[0], which this renames)
        argv = ["bash", "-c", 'exec -a wireguard-go /usr/bin/python3 -c "$0" "$1" "$2" "$3"', HOLD,
                str(port), str(seconds), INTERFACE]
    else:
        argv = [sys.executable, "-c", HOLD, str(port), str(seconds)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "bound\n"
        yield process
    finally:
        process.kill()
        process.wait(5)


def test_the_holder_of_a_port_is_found_and_told_apart() -> None:
    port = free_port()
    with holder(port, 30, as_wireguard_go=True) as ours:
        assert udp_port_holders(port) == [ours.pid]
        assert is_own_wireguard_go(ours.pid, INTERFACE)
        assert not is_own_wireguard_go(ours.pid, "lrtest-other")
    with holder(port, 30, as_wireguard_go=False) as other:
        assert udp_port_holders(port) == [other.pid]
        assert not is_own_wireguard_go(other.pid, INTERFACE)


def test_a_wireguard_go_of_ours_that_is_exiting_is_waited_for() -> None:
    port = free_port()
    with holder(port, 1.0, as_wireguard_go=True) as ours:
        started = time.monotonic()
        assert reclaim_port(port, INTERFACE, wait_s=5.0) is None
        waited = time.monotonic() - started
        assert ours.wait(1) == 0  # it exited by itself
    assert 0.5 < waited < 3.0
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.1", port))  # free again


def test_a_wireguard_go_of_ours_that_stays_is_ended() -> None:
    port = free_port()
    with holder(port, 60, as_wireguard_go=True) as ours:
        assert reclaim_port(port, INTERFACE, wait_s=0.5) is None
        assert ours.wait(2) != 0  # terminated
    assert udp_port_holders(port) == []


def test_a_port_held_by_another_program_is_reported_untouched() -> None:
    port = free_port()
    with holder(port, 60, as_wireguard_go=False) as other:
        found = reclaim_port(port, INTERFACE, wait_s=0.5)
        assert found is not None and found.startswith(f"held by PID {other.pid} ({sys.executable} -c ")
        assert other.poll() is None  # not ours: left alone


def test_the_agent_creates_its_interface_again_once_its_own_port_is_back(monkeypatch) -> None:
    from types import SimpleNamespace

    import pytest

    import agent.adapters as adapters
    import mesh.wireguard.port as port_module
    from mesh.interfaces import MeshError
    from mesh.wireguard import PortInUseError

    attempts: list[str] = []

    def create(_key: object, address: str, **_kwargs: object) -> str:
        attempts.append(address)
        if len(attempts) == 1:
            raise PortInUseError("UDP port 51820 is already in use; choose another listen port")
        return "the interface"

    monkeypatch.setattr(adapters.WireGuardInterface, "create", staticmethod(create))
    monkeypatch.setattr(port_module, "reclaim_port", lambda port, interface: None)
    agent = SimpleNamespace(config=SimpleNamespace(interface=INTERFACE, listen_port=51820), private_key=None,
                            state_dir=None)
    owner = adapters.InterfaceOwner(agent)  # type: ignore[arg-type]
    assert owner._create("10.66.0.2") == "the interface"
    assert attempts == ["10.66.0.2/16", "10.66.0.2/16"]

    attempts.clear()
    monkeypatch.setattr(port_module, "reclaim_port",
                        lambda port, interface: "held by PID 4242 (nc -u -l 51820)")
    with pytest.raises(MeshError) as refused:
        owner._create("10.66.0.2")
    assert str(refused.value) == ("UDP port 51820 (--listen-port) is held by PID 4242 (nc -u -l 51820); stop "
                                  "that program or choose another --listen-port")
    assert attempts == ["10.66.0.2/16"]


def test_the_agent_creates_its_interface_again_when_it_is_gone(monkeypatch) -> None:
    """A join after wireguard-go exited gets a working interface, not an address on nothing."""
    from types import SimpleNamespace

    import agent.adapters as adapters

    made: list[SimpleNamespace] = []

    def create(_key: object, address: str, **_kwargs: object) -> SimpleNamespace:
        interface = SimpleNamespace(address=address, gone=False, closed=False)
        interface.close = lambda remove=True: setattr(interface, "closed", remove)
        made.append(interface)
        return interface

    monkeypatch.setattr(adapters.WireGuardInterface, "create", staticmethod(create))
    agent = SimpleNamespace(config=SimpleNamespace(interface=INTERFACE, listen_port=51820), private_key=None,
                            state_dir=None)
    owner = adapters.InterfaceOwner(agent)  # type: ignore[arg-type]
    assert owner.assign("10.66.0.2") == INTERFACE
    assert owner.assign("10.66.0.2") == INTERFACE
    assert len(made) == 1  # alive: kept
    made[0].gone = True  # wireguard-go exited
    assert owner.assign("10.66.0.2") == INTERFACE
    assert [(i.address, i.closed) for i in made] == [("10.66.0.2/16", True), ("10.66.0.2/16", False)]
    assert owner.interface is made[1] and owner.addresses == {"10.66.0.2"}


def test_two_parties_assigned_at_once_create_one_interface(monkeypatch) -> None:
    """A party restored at start and a join arrive on two I/O workers at the same moment: one
    creation, then the second address on it (two would start two wireguard-go for one name)."""
    import threading
    from types import SimpleNamespace

    import agent.adapters as adapters

    created: list[str] = []
    added: list[list[str]] = []

    def create(_key: object, address: str, **_kwargs: object) -> SimpleNamespace:
        created.append(address)
        time.sleep(0.3)  # wireguard-go starting
        return SimpleNamespace(gone=False)

    def run(argv: list[str], **_kwargs: object) -> SimpleNamespace:
        added.append(argv)
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(adapters.WireGuardInterface, "create", staticmethod(create))
    monkeypatch.setattr(adapters.subprocess, "run", run)
    agent = SimpleNamespace(config=SimpleNamespace(interface=INTERFACE, listen_port=51820), private_key=None,
                            state_dir=None)
    owner = adapters.InterfaceOwner(agent)  # type: ignore[arg-type]
    workers = [threading.Thread(target=owner.assign, args=(address,))
               for address in ("10.66.0.2", "10.66.1.2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(5)
    assert len(created) == 1
    assert len(added) == 1 and added[0][:4] == ["ip", "address", "add", added[0][3]]
    assert owner.addresses == {"10.66.0.2", "10.66.1.2"}


def test_a_port_held_by_a_program_this_agent_may_not_look_into_is_reported_as_held(monkeypatch) -> None:
    """An agent that dropped root or its capabilities cannot read another user's (or a more
    privileged program's) descriptors: the port is bound, nobody visible holds it, and that is
    a holder to report, not a free port."""
    import mesh.wireguard.port as port_module

    monkeypatch.setattr(port_module, "udp_port_holders", lambda port: [])
    port = free_port()
    with holder(port, 30, as_wireguard_go=False):
        found = reclaim_port(port, INTERFACE, wait_s=0.5)
    assert found == ("held by a program this agent may not look into (another user's, or one with more "
                     f"privileges; `ss -ulpn 'sport = {port}'` as root names it)")
    assert reclaim_port(port, INTERFACE, wait_s=0.5) is None  # once it is gone: free
