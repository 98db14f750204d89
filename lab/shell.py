"""Bounded command execution and the namespace primitives the lab is built from."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

WIREGUARD_RUN_DIR = Path("/var/run/wireguard")
DEFAULT_TIMEOUT_S = 30.0


class LabError(Exception):
    """A lab operation failed; the message says which command and why."""


def sh(argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True,
       input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one command to completion within ``timeout`` seconds."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                input=input_text, check=False)
    except subprocess.TimeoutExpired as error:
        raise LabError(f"timed out after {timeout:g}s: {' '.join(argv)}") from error
    except FileNotFoundError as error:
        raise LabError(f"command not found: {argv[0]}") from error
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv)} exited {result.returncode}: {detail[-1] if detail else ''}")
    return result


def ns_exec(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def list_netns() -> list[str]:
    out = sh(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    result = sh(["ip", "netns", "pids", netns], check=False)
    return [int(token) for token in result.stdout.split() if token.isdigit()]


def netns_links(netns: str) -> list[str]:
    result = sh(["ip", "-n", netns, "-o", "link", "show"], check=False)
    names = []
    for line in result.stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            names.append(parts[1].strip().split("@")[0])
    return names


def pid_start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (guards against PID reuse), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the parenthesised command name (which may hold spaces).
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int, start_time: int | None) -> bool:
    current = pid_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def terminate_pids(pids: Iterable[int], grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there after ``grace_s``."""
    pending = [pid for pid in pids if pid > 1 and pid != os.getpid()]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if _exists(pid)]
        if pending:
            time.sleep(0.05)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists": reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def remove_stale_wireguard_socket(name: str) -> None:
    """Unlink ``/var/run/wireguard/<name>.sock`` if nothing listens on it any more.

    Those sockets are shared by every namespace; one with a live listener may belong
    to someone else's lab, so only a dead one is removed.
    """
    path = WIREGUARD_RUN_DIR / f"{name}.sock"
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
    finally:
        probe.close()


def destroy_netns(names: Iterable[str], run_id: str | None = None) -> None:
    """Kill every process in these namespaces, clear stale WireGuard sockets, delete them.

    Sockets are found by the links still there and, with ``run_id``, by any socket
    name containing it (a SIGKILLed wireguard-go leaves its socket but not its link).
    """
    names = list(names)
    links: list[str] = []
    pids: list[int] = []
    for name in names:
        links += netns_links(name)
        pids += netns_pids(name)
    terminate_pids(pids)
    for name in names:
        sh(["ip", "netns", "del", name], check=False)
    candidates = {link for link in links if link not in ("lo", "wan0", "lan0", "br0") and "/" not in link}
    if run_id and WIREGUARD_RUN_DIR.is_dir():
        candidates |= {path.stem for path in WIREGUARD_RUN_DIR.glob(f"*{run_id}*.sock")}
    for name in candidates:
        remove_stale_wireguard_socket(name)
