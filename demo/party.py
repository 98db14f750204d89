"""A LANrage deployment inside a lab: control server, relays, one agent per peer.

Everything is driven the way a user would: ``lanrage control-server``, ``relay-server``,
``serve``, ``party create|join|leave``, ``status --json``, ``history``, ``sql``, each run
inside its host's namespace. Used by the demo (with the installed ``lanrage`` command),
the lab tests and bench/connect.py (with this checkout's ``cli.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lab import Lab, LabProcess

CONTROL_PORT = 8667
RELAY_PORT = 3479
API = "127.0.0.1:8666"
# Runs inside a host's namespace: the live actors' view through the agent's own API.
_LIVE_ACTORS = """
import json, sys, urllib.request
token = open(sys.argv[1] + "/api-token").read().strip()
request = urllib.request.Request("http://127.0.0.1:8666/api/actors",
                                 headers={"Authorization": "Bearer " + token})
print(urllib.request.urlopen(request, timeout=10).read().decode())
"""
CHECKOUT_CLI = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py")]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "PID (comm) STATE PPID ...": comm may hold spaces and parentheses, so split after the last ")".
        parents.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def installed_command() -> list[str]:
    """The ``lanrage`` command installed beside this interpreter (scripts/setup.sh puts it there)."""
    script = Path(sys.executable).parent / "lanrage"
    return [str(script)] if script.is_file() else CHECKOUT_CLI


class LabParty:
    def __init__(self, lab: Lab, directory: Path | None = None, command: list[str] | None = None) -> None:
        self.lab = lab
        self.command = command or CHECKOUT_CLI
        self.dir = directory or lab.workdir
        self.secret_file = self.dir / "relay.secret"
        self.secret_file.write_text(os.urandom(32).hex())
        os.chmod(self.secret_file, 0o600)
        self.control_url = f"ws://{lab.control.public_ip}:{CONTROL_PORT}"
        self.relays = [f"{relay.public_ip}:{RELAY_PORT}" for relay in lab.relays]
        self.stun = [f"{host}:{port}" for host, port in lab.stun_servers]
        self.agents: dict[str, LabProcess] = {}
        self.control: LabProcess | None = None
        self.relay_processes: dict[str, LabProcess] = {}  # by relay address

    def cli(self, host: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        return self.lab.run(host, [*self.command, *args], timeout=timeout, check=check).stdout

    def state(self, host: str) -> str:
        return str(self.dir / host)

    # ------------------------------------------------------------ services

    def start_services(self) -> None:
        for relay in self.relays:
            self.start_relay(relay, wait=False)
        self.start_control()
        for host in self.lab.relays:
            self.lab.wait_udp_listening(host.name, RELAY_PORT, 20)

    def start_relay(self, relay: str, wait: bool = True) -> None:
        """Start the relay server at ``relay`` (one of ``self.relays``)."""
        host = self.lab.relays[self.relays.index(relay)]
        self.relay_processes[relay] = self.lab.popen(
            host.name, [*self.command, "relay-server", "--listen", f"0.0.0.0:{RELAY_PORT}", "--public", relay,
                        "--secret-file", str(self.secret_file), "--state-dir", self.state(host.name)])
        if wait:
            self.lab.wait_udp_listening(host.name, RELAY_PORT, 20)

    def start_control(self) -> None:
        args = [*self.command, "control-server", "--listen", f"0.0.0.0:{CONTROL_PORT}",
                "--relay-secret-file", str(self.secret_file), "--state-dir", self.state("control"),
                "--heartbeat", "2", "--ttl", "6"]
        for relay in self.relays:
            args += ["--relay", relay]
        self.control = self.lab.popen("control", args)
        self.lab.wait_tcp_listening("control", CONTROL_PORT, 20)

    def stop_control(self) -> None:
        assert self.control is not None
        self.lab.kill(self.control, signal.SIGTERM)

    def start_agents(self, hosts: list[str]) -> None:
        for host in hosts:
            self.start_agent(host, wait=False)
        for host in hosts:
            self.lab.wait_tcp_listening(host, 8666, 60)

    def start_agent(self, host: str, wait: bool = True, env: dict[str, str] | None = None) -> None:
        node = self.lab.host(host)
        args = [*self.command, "serve", "--name", host, "--control", self.control_url,
                "--interface", node.wg_name, "--listen-port", "51820", "--state-dir", self.state(host)]
        for relay in self.relays:
            args += ["--relay", relay]
        for stun in self.stun:
            args += ["--stun", stun]
        self.agents[host] = self.lab.popen(host, args, env=env)
        if wait:
            self.lab.wait_tcp_listening(host, 8666, 60)

    def kill_agent(self, host: str, sig: int) -> None:
        self.lab.kill(self.agents.pop(host), sig)

    def kill_hard(self, process: LabProcess) -> None:
        """``kill -9 PID``: that one process, not its group (its children are left to
        the service's own cleanup, as after a crash); waits until it is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def kill_unit(self, process: LabProcess) -> None:
        """What the shipped unit's ``KillMode=mixed`` leaves after a crash: SIGKILL to every
        process of the agent's control group, the agent and its children (wireguard-go runs
        in a session of its own, so not its process group: its process tree); waits until the
        agent is gone."""
        tree = [process.pid, *descendants(process.pid)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)

    def services(self) -> dict[str, LabProcess]:
        """Every service process of the party now, by a name for messages."""
        found = {f"serve on {host}": proc for host, proc in self.agents.items()}
        found.update({f"relay-server {relay}": proc for relay, proc in self.relay_processes.items()})
        if self.control is not None:
            found["control-server"] = self.control
        return found

    # ------------------------------------------------------------ the user's commands

    def create(self, host: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.cli(host, "party", "create", name, "--json", "--state-dir",
                                        self.state(host))))

    def join(self, host: str, invite: str) -> dict[str, Any]:
        return dict(json.loads(self.cli(host, "party", "join", invite, "--json", "--state-dir",
                                        self.state(host))))

    def leave(self, host: str) -> None:
        self.cli(host, "party", "leave", "--state-dir", self.state(host))

    def status(self, host: str) -> dict[str, Any]:
        return dict(json.loads(self.cli(host, "status", "--json", "--state-dir", self.state(host))))

    def peers(self, host: str) -> dict[str, dict[str, Any]]:
        parties = self.status(host)["parties"]
        return {p["name"]: p for p in parties[0]["peers"]} if parties else {}

    def virtual_ips(self, host: str) -> dict[str, str]:
        """Every member's virtual IP in ``host``'s (first) party, by name, its own included."""
        parties = self.status(host)["parties"]
        if not parties:
            return {}
        found = {p["name"]: p["virtual_ip"] for p in parties[0]["peers"] if p.get("virtual_ip")}
        if parties[0].get("virtual_ip"):
            found[host] = parties[0]["virtual_ip"]
        return found

    def events(self, host: str, *types: str) -> list[dict[str, Any]]:
        """``events --json`` of ``host``'s store (only ``types`` if given), oldest first."""
        args = ["events", "--json", "--state-dir", self.state(host)]
        for event_type in types:
            args += ["--type", event_type]
        return [json.loads(line) for line in self.cli(host, *args).splitlines() if line.strip()]

    def live_connections(self, host: str) -> dict[str, tuple[str, str, str]]:
        """What the connection actors hold now (GET /api/actors), not the log's projection."""
        answer = self.lab.run(host, [sys.executable, "-c", _LIVE_ACTORS, self.state(host)], timeout=20).stdout
        connections = json.loads(answer)["connections"]
        return {c["peer_id"]: (c["state"], c["path"], c["endpoint"]) for c in connections
                if c["state"] not in ("closed", None)}

    def replayed_connections(self, host: str) -> dict[str, tuple[str, str, str]]:
        """The same, folded from the log by ``replay --at now --json``."""
        world = json.loads(self.cli(host, "replay", "--at", "now", "--json", "--state-dir", self.state(host)))
        return {c["peer_id"]: (c["state"], c["path"], c["endpoint"]) for c in world["connections"].values()
                if c["state"] not in ("closed", None)}

    def ping(self, host: str, virtual_ip: str, count: int = 1, timeout_s: float = 2.0) -> bool:
        return self.lab.ping(host, virtual_ip, count=count, timeout_s=timeout_s)

    def wait_ping(self, host: str, virtual_ip: str, timeout_s: float) -> float | None:
        """Seconds until the first echo reply (probing with one-second pings), None if none came."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.lab.ping(host, virtual_ip, count=1, timeout_s=1.0):
                return time.monotonic() - start
        return None
