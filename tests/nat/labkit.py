"""Driving ``lab_node.py`` processes from a test: the test process is the signalling channel."""

from __future__ import annotations

import itertools
import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import Lab
from mesh.keys import generate_keypair, write_private_key

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
