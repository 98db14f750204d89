"""The same actors on the production base (multiprocTCPBase, one process per thespian actor),
persisting to SQLite, with the simulated network built inside the actors' processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorExitRequest

from actors import messages as m
from actors.config import ActorConfig, ConnectionConfig
from actors.system import start_node, start_system
from events.streams import party_stream, peer_stream
from lab.ports import free_port
from store import open_store
from tests.actors.conftest import BOB, LOCAL, RELAY_A, describe
from tests.actors.test_scenarios import JOINED


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def forks_of_this_process(since_ticks: int) -> list[int]:
    cmdline = Path("/proc/self/cmdline").read_bytes()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if (fields[0] != "Z" and int(fields[19]) >= since_ticks
                        and Path(f"/proc/{entry}/cmdline").read_bytes() == cmdline):
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.mark.parametrize("hosting", ["inline", "process"])
def test_actors_on_multiproc_tcp_base(tmp_path: Path, hosting: str) -> None:
    os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
    url = f"sqlite:///{tmp_path / 'events.db'}"
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    began = int(uptime * os.sysconf("SC_CLK_TCK")) - 1
    config = ActorConfig(connection=ConnectionConfig(probe_interval_s=0.2, metrics_interval_s=3600),
                         peer_hosting=hosting, restart_delay_s=0.2)
    spec = m.AdapterSpec.of("mesh.sim:adapters", network_name="tcp", node="local", candidates=(LOCAL,))
    system = start_system("multiprocTCPBase", admin_port=free_port())
    store = open_store(url)
    try:
        node = start_node(system, m.StartNode("local", m.StoreSpec(url), spec, (RELAY_A,), config,
                                              m.LogSpec("INFO", str(tmp_path / "actors.log"))))
        assert len(forks_of_this_process(began)) >= 4  # admin, logger, node, relay monitor, party...
        assert system.ask(node, m.CreateParty("p1", "LAN", "alice", "Alice"), 10) == m.PartyOpened(
            "p1", "alice", "10.66.0.1")
        system.tell(node, m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))

        def bob() -> Any:
            status = system.ask(node, m.StatusQuery(), 10)
            peers = {p.peer_id: p for p in status.parties[0].peers} if status.parties else {}
            return peers["bob"].connection if "bob" in peers else None

        def stored() -> list[str]:
            return [describe(r.event) for r in store.read_stream(peer_stream("local", "p1", "bob"))]

        wait_for(lambda: bob() is not None and bob().state == "connected")
        assert stored()[:6] == JOINED
        assert stored()[6].startswith("ConnectionStateChanged(from_state='connecting', to_state='connected'")
        batch = tuple(m.LatencyObserved(v) for v in (250.0, 30.0, 260.0))
        system.tell(node, m.Observations("p1", "bob", batch))
        wait_for(lambda: len(stored()) >= 10)
        assert [e.split(",")[1] for e in stored()[7:10]] == [
            " to_state='degraded'", " to_state='connected'", " to_state='degraded'"]

        # Kill the party actor's process: the node recreates it, it replays, nothing is stored twice.
        before = bob()
        positions = len(stored()), len(store.read_stream(party_stream("local", "p1")))
        party = dict(system.ask(node, m.ChildrenQuery(), 10).children)["p1"]
        system.tell(party, ActorExitRequest())
        def party_address() -> Any:
            return dict(system.ask(node, m.ChildrenQuery(), 10).children).get("p1")

        wait_for(lambda: party_address() not in (None, party))
        wait_for(lambda: bob() is not None)
        assert bob().state in ("connected", "degraded") and bob().endpoint == before.endpoint
        assert len(store.read_stream(party_stream("local", "p1"))) == positions[1]
        types = [r.event_type for r in store.read_stream(peer_stream("local", "p1", "bob"))][positions[0]:]
        assert "WireGuardPeerConfigured" not in types and "ConnectionAttemptStarted" not in types

        # A real crash: SIGKILL the newest actor process (the re-created party when inline, its
        # peer-connection actor when one process per peer). Its parent recreates it from its stream.
        alive = set(forks_of_this_process(began))
        victim = max(alive, key=start_ticks)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in forks_of_this_process(began)
                 and set(forks_of_this_process(began)) - alive)  # its replacement
        wait_for(lambda: bob() is not None)
        assert bob().state in ("connected", "degraded") and bob().endpoint == before.endpoint
        assert len(store.read_stream(party_stream("local", "p1"))) == positions[1]
        types = [r.event_type for r in store.read_stream(peer_stream("local", "p1", "bob"))][positions[0]:]
        assert "WireGuardPeerConfigured" not in types and "ConnectionAttemptStarted" not in types

        assert system.ask(node, m.LeaveParty("p1"), 10) == m.PartyClosed("p1", "left by the user")
        assert stored()[-1].startswith("ConnectionStateChanged(") and "to_state='closed'" in stored()[-1]
    finally:
        system.shutdown()
        store.close()
    wait_for(lambda: not forks_of_this_process(began), timeout_s=10)
