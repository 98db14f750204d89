"""A LANrage deployment inside a lab: control server, relays, one agent per peer.

Everything is driven the way a user would: ``lanrage control-server``, ``relay-server``,
``serve``, ``party create|join|leave``, ``status --json``, ``history``, ``sql``, each run
inside its host's namespace. Used by the demo (with the installed ``lanrage`` command),
the lab tests and bench/connect.py (with this checkout's ``cli.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lab import Lab, LabProcess

CONTROL_PORT = 8667
RELAY_PORT = 3479
API = "127.0.0.1:8666"
CHECKOUT_CLI = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py")]


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

    def cli(self, host: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        return self.lab.run(host, [*self.command, *args], timeout=timeout, check=check).stdout

    def state(self, host: str) -> str:
        return str(self.dir / host)

    # ------------------------------------------------------------ services

    def start_services(self) -> None:
        for relay, host in zip(self.relays, self.lab.relays, strict=True):
            self.lab.popen(host.name, [*self.command, "relay-server", "--listen",
                                       f"0.0.0.0:{RELAY_PORT}", "--public", relay, "--secret-file",
                                       str(self.secret_file), "--state-dir", self.state(host.name)])
        self.start_control()
        for host in self.lab.relays:
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
        import signal

        assert self.control is not None
        self.lab.kill(self.control, signal.SIGTERM)

    def start_agents(self, hosts: list[str]) -> None:
        for host in hosts:
            self.start_agent(host, wait=False)
        for host in hosts:
            self.lab.wait_tcp_listening(host, 8666, 60)

    def start_agent(self, host: str, wait: bool = True) -> None:
        node = self.lab.host(host)
        args = [*self.command, "serve", "--name", host, "--control", self.control_url,
                "--interface", node.wg_name, "--listen-port", "51820", "--state-dir", self.state(host)]
        for relay in self.relays:
            args += ["--relay", relay]
        for stun in self.stun:
            args += ["--stun", stun]
        self.agents[host] = self.lab.popen(host, args)
        if wait:
            self.lab.wait_tcp_listening(host, 8666, 60)

    def kill_agent(self, host: str, sig: int) -> None:
        self.lab.kill(self.agents.pop(host), sig)

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

    def ping(self, host: str, virtual_ip: str, count: int = 1, timeout_s: float = 2.0) -> bool:
        return self.lab.ping(host, virtual_ip, count=count, timeout_s=timeout_s)

    def wait_ping(self, host: str, virtual_ip: str, timeout_s: float) -> float | None:
        """Seconds until the first echo reply (probing with one-second pings), None if none came."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.lab.ping(host, virtual_ip, count=1, timeout_s=1.0):
                return time.monotonic() - start
        return None
