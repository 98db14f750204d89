"""Runs LANrage services as real processes through the CLI, and cleans up after them.

Every process a test starts carries ``LANRAGE_E2E_RUN=<run id>`` in its environment;
its children (wireguard-go) inherit it. Teardown kills exactly those PIDs (found by
that marker in /proc), so a wireguard-go orphaned by a ``kill -9`` never outlives the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lab.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CLI = str(ROOT / "cli.py")



def wait_for(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:  # the thing is not up yet
            last = error
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")


class Run:
    """One test's processes. Use as a context manager; ``close`` kills everything it started."""

    def __init__(self, directory: Path, prefix: list[str] | None = None) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.directory = directory
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", NAME]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "THESPIAN_BASE_IPADDR": "127.0.0.1", "LANRAGE_E2E_RUN": self.id,
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("LANRAGE_STATE_DIR", None)
        self.env.pop("LANRAGE_DB", None)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self, name: str, *args: str, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
        handle = open(self.log(name), "ab")  # noqa: SIM115 (lives as long as the process)
        process = subprocess.Popen([*(self.prefix if prefix is None else prefix), PYTHON, CLI, *args],
                                   stdout=handle, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        self.processes[name] = process
        return process

    def cli(self, *args: str, check: bool = True, timeout_s: float = 60.0,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*(self.prefix if prefix is None else prefix), PYTHON, CLI, *args],
                              capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=timeout_s)
        if check and done.returncode != 0:
            raise AssertionError(f"cli {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        process = self.processes.pop(name)
        process.send_signal(sig)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(5)

    def ours(self) -> list[int]:
        marker = f"LANRAGE_E2E_RUN={self.id}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def close(self) -> None:
        for name in list(self.processes):
            with contextlib.suppress(Exception):
                self.stop(name, timeout_s=15)
        for _ in range(3):
            left = self.ours()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        print(f"processes of run {self.id} still alive: {self.ours()}", file=sys.stderr)


class Node:
    """One ``serve`` process with its own state directory and API port."""

    def __init__(self, run: Run, name: str, control: str | None, adapters: str = "sim",
                 extra: tuple[str, ...] = (), prefix: list[str] | None = None) -> None:
        self.run = run
        self.name = name
        self.state = run.directory / name
        self.port = free_port()
        self.control = control
        self.adapters = adapters
        self.extra = extra
        self.prefix = prefix

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Node:
        args = ["serve", "--adapters", self.adapters, "--name", self.name, "--state-dir", str(self.state),
                "--api-listen", self.api, *self.extra]
        if self.control:
            args += ["--control", self.control]
        self.run.start(self.name, *args, prefix=self.prefix)
        wait_for(lambda: httpx.get(f"http://{self.api}/openapi.json", timeout=2).status_code == 200, 30,
                 f"{self.name}'s API")
        return self

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run.cli(*args, "--api", self.api, "--state-dir", str(self.state), check=check,
                            prefix=self.prefix)

    def auth(self) -> dict[str, str]:
        """The bearer header every route about peers needs (the token `serve` wrote)."""
        return {"Authorization": f"Bearer {(self.state / 'api-token').read_text().strip()}"}

    def status(self) -> dict[str, Any]:
        """Through the API (polled often; the CLI's `status --json` prints the same document)."""
        answer = httpx.get(f"http://{self.api}/status", timeout=10, headers=self.auth())
        answer.raise_for_status()
        return dict(answer.json())

    def status_cli(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "--json").stdout))

    def members(self, party_id: str) -> dict[str, dict[str, Any]]:
        for party in self.status()["parties"]:
            if party["party_id"] == party_id:
                return {peer["name"]: peer for peer in party["peers"]}
        return {}

    def create(self, name: str) -> tuple[str, str]:
        created = json.loads(self.cli("party", "create", name, "--json").stdout)
        return created["party_id"], created["invite"]

    def join(self, invite: str) -> dict[str, Any]:
        return json.loads(self.cli("party", "join", invite, "--json").stdout)
