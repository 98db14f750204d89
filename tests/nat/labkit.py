"""Driving ``lab_node.py`` processes from a test: the test process is the signalling channel."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import HostSpec, Lab, LabProcess
from mesh.keys import generate_keypair, write_private_key
from mesh.nat.punch import should_try_direct
from mesh.relay import issue_tickets

NODE = str(Path(__file__).with_name("lab_node.py"))
_serial = itertools.count()


class Node:
    def __init__(self, lab: Lab, host: str, address: str, port: int) -> None:
        self.lab = lab
        self.host = host
        self.address = address
        self.vip = address.split("/")[0]
        self.name = f"t{lab.run_id}n{next(_serial)}"[:15]
        key = generate_keypair()[0]
        key_file = lab.workdir / f"{self.name}.key"
        write_private_key(key_file, key)
        self.log_path = lab.workdir / f"{self.name}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                lab.argv(host, [sys.executable, NODE, self.name, address, str(port), str(key_file)]),
                env=lab.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                start_new_session=True)
        hello = self._read(30)
        self.public_key: str = hello["public_key"]
        self.port: int = hello["listen_port"]

    def call(self, timeout_s: float = 30, **command: Any) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()
        answer = self._read(timeout_s)
        if answer.get("error") and command["cmd"] != "detect":
            raise AssertionError(f"{self.host} {command['cmd']}: {answer['error']}")
        return answer

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        readable, _, _ = select.select([self.popen.stdout], [], [], timeout_s)
        line = self.popen.stdout.readline() if readable else ""
        if not line:
            raise AssertionError(f"{self.host}: node gave no answer; log:\n{self.log()}")
        return json.loads(line)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def ping_until(lab: Lab, host: str, ip: str, timeout_s: float) -> float | None:
    """Seconds until the first ping reply through the tunnel, None if none came in time."""
    start = time.monotonic()
    deadline = start + timeout_s
    while time.monotonic() < deadline:
        result = lab.run(host, ["ping", "-c", "1", "-W", "1", "-i", "0.2", ip], check=False, timeout=5)
        if result.returncode == 0:
            return time.monotonic() - start
    return None


RELAY_PORT = 3478
FORWARD_PORT = 51820
_ports = itertools.count(42000, 2)


@dataclass
class RelayLab:
    lab: Lab
    secret: bytes
    relays: dict[str, LabProcess]

    def relay_address(self, name: str) -> str:
        return f"{self.lab.host(name).public_ip}:{RELAY_PORT}"


def start_relay(lab: Lab, name: str, secret_file: str) -> LabProcess:
    proc = lab.popen(name, [sys.executable, "cli.py", "relay-server", "--listen", f"0.0.0.0:{RELAY_PORT}",
                            "--public", f"{lab.host(name).public_ip}:{RELAY_PORT}", "--secret-file",
                            secret_file, "--db", f"sqlite:///{lab.workdir / (name + '.db')}", "--state-dir",
                            str(lab.workdir / f"state-{name}"), "--sample-interval", "2"])
    lab.wait_udp_listening(name, RELAY_PORT)
    return proc


@contextlib.contextmanager
def relay_lab(hosts: list[HostSpec], relays: int = 2) -> Iterator[RelayLab]:
    """A lab with ``relays`` running relay-servers sharing one secret with this test (the control plane)."""
    with Lab.build(hosts, relays=relays) as lab:
        secret = os.urandom(32)
        secret_file = lab.workdir / "relay.secret"
        secret_file.write_text(secret.hex())
        os.chmod(secret_file, 0o600)
        procs = {f"relay{n}": start_relay(lab, f"relay{n}", str(secret_file)) for n in range(1, relays + 1)}
        yield RelayLab(lab, secret, procs)


def port_for(nat: str) -> int:
    return FORWARD_PORT if nat == "port_forwarded" else next(_ports)


def both(first: Any, second: Any) -> tuple[Any, Any]:
    """Run two callables at once (each node works in parallel, as real nodes do)."""
    results: dict[int, Any] = {}
    thread = threading.Thread(target=lambda: results.__setitem__(1, second()))
    thread.start()
    results[0] = first()
    thread.join()
    return results[0], results[1]


def stun_list(lab: Lab) -> list[str]:
    return [f"{host}:{port}" for host, port in lab.stun_servers]


def connect(world: RelayLab, a: Node, b: Node, punch_timeout_s: float = 3.0,
            relay: str = "relay1") -> dict[str, Any]:
    """What two agents do for a new peer connection; returns how it went."""
    lab = world.lab
    start = time.monotonic()
    detected_a, detected_b = both(lambda: a.call(cmd="detect", stun=stun_list(lab)),
                                  lambda: b.call(cmd="detect", stun=stun_list(lab)))
    detect_s = time.monotonic() - start
    nat_a = (detected_a["nat"] or {}).get("nat_type")
    nat_b = (detected_b["nat"] or {}).get("nat_type")
    path, punch_ms, endpoints = "relay", None, None
    if should_try_direct(nat_a, nat_b):
        endpoints, punch_ms = punch_pair(a, b, punch_timeout_s)
        path = "relay" if endpoints is None else "direct"
    if endpoints is None:
        endpoints = relay_endpoints(world, a, b, relay)
    set_endpoints(a, b, endpoints)
    ping_start = time.monotonic()
    first_reply = ping_until(lab, a.host, b.vip, 15)
    return {"nat_a": nat_a, "nat_b": nat_b, "path": path, "endpoints": endpoints, "detect_s": detect_s,
            "punch_ms": punch_ms, "ping_ok": first_reply is not None,
            "ping_ms": None if first_reply is None else first_reply * 1000,
            "total_s": (time.monotonic() - start) if first_reply is not None else None,
            "connect_ms": (time.monotonic() - start - detect_s) * 1000, "ping_start": ping_start}


def punch_pair(a: Node, b: Node, timeout_s: float) -> tuple[tuple[str, str] | None, float]:
    """Both nodes punch at one agreed moment; the endpoints if both got a punch ACK."""
    cand_a = a.call(cmd="candidates")["candidates"]
    cand_b = b.call(cmd="candidates")["candidates"]
    session = os.urandom(16).hex()
    start_at = time.time() + 0.2  # the agreed moment, as signalling would carry it
    res_a, res_b = both(
        lambda: a.call(cmd="punch", session=session, remote=cand_b, timeout=timeout_s,
                       start_at=start_at)["result"],
        lambda: b.call(cmd="punch", session=session, remote=cand_a, timeout=timeout_s,
                       start_at=start_at)["result"])
    elapsed = max(res_a["elapsed_ms"], res_b["elapsed_ms"])
    if res_a["succeeded"] and res_b["succeeded"]:
        return (res_a["endpoint"], res_b["endpoint"]), elapsed
    return None, elapsed


def set_endpoints(a: Node, b: Node, endpoints: tuple[str, str], stagger_s: float = 0.1) -> None:
    """B first, A a moment later. Configured at the same instant, both WireGuards initiate; the
    initiations cross, each side turns responder and drops the other's response, and nothing
    moves until WireGuard's 5 s retry (seen in 1 of 6 relayed runs). Staggered, B's early
    initiation meets an unknown peer and is dropped; A's completes at once."""
    b.call(cmd="peer", public_key=a.public_key, endpoint=endpoints[1], allowed_ips=[f"{a.vip}/32"])
    time.sleep(stagger_s)
    a.call(cmd="peer", public_key=b.public_key, endpoint=endpoints[0], allowed_ips=[f"{b.vip}/32"])


def relay_endpoints(world: RelayLab, a: Node, b: Node, relay: str) -> tuple[str, str]:
    ticket_a, ticket_b = issue_tickets(world.secret, world.relay_address(relay), "matrix", a.name, b.name)
    endpoint_a = a.call(cmd="relay", ticket=ticket_a.to_json())["endpoint"]
    endpoint_b = b.call(cmd="relay", ticket=ticket_b.to_json())["endpoint"]
    return endpoint_a, endpoint_b


