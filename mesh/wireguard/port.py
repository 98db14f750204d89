"""Who holds a UDP port, and getting it back from a wireguard-go of our own.

A restarted agent re-creates its interface on the same port. The wireguard-go of the
previous run (its link removed, the process still exiting, or left behind by a crash)
may hold that port for a moment: that is ours to wait for, or to end, never a reason to
give up. A port held by any other program is reported with its PID and name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

MAX_PROCESSES = 65536  # bounded scan of /proc
UNSEEN_ROUNDS = 4  # 0.2 s of a port bound by nobody visible: held, not closing


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the UDP sockets bound to ``port`` in this network namespace."""
    found: set[str] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(fields[9])
    found.discard("0")
    return found


def udp_port_holders(port: int) -> list[int]:
    """PIDs with a UDP socket bound to ``port`` (those whose descriptors this process may read)."""
    wanted = {f"socket:[{inode}]" for inode in _socket_inodes(port)}
    if not wanted:
        return []
    holders = []
    for count, entry in enumerate(Path("/proc").iterdir()):
        if count > MAX_PROCESSES:
            break
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        holders.append(int(entry.name))
                        break
    return holders


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def is_own_wireguard_go(pid: int, interface: str) -> bool:
    """A wireguard-go serving our interface name (``wireguard-go [-f] NAME``)."""
    argv = _argv(pid)
    return bool(argv) and os.path.basename(argv[0]) == "wireguard-go" and argv[-1] == interface


def describe(pid: int) -> str:
    argv = _argv(pid)
    shown = " ".join(argv)[:80] if argv else "?"
    return f"PID {pid} ({''.join(c if c.isprintable() else '?' for c in shown)})"


def reclaim_port(port: int, interface: str, wait_s: float = 5.0, term_wait_s: float = 2.0) -> str | None:
    """Wait for a wireguard-go of ours on ``interface`` to let ``port`` go, ending it if it
    does not within ``wait_s``. None once the port is free; else who holds it."""
    deadline = time.monotonic() + wait_s
    terminated = False
    unseen = 0  # rounds in a row with the port bound by no process this one may look into
    while True:
        holders = udp_port_holders(port)
        if not holders:
            unseen = unseen + 1 if _socket_inodes(port) else 0
            if not unseen:
                return None
            if unseen > UNSEEN_ROUNDS:  # not a socket closing: a program we may not look into holds it
                return ("held by a program this agent may not look into (another user's, or one with "
                        f"more privileges; `ss -ulpn 'sport = {port}'` as root names it)")
            time.sleep(0.05)
            continue
        # A process that is exiting shows no command line any more: waited for, never judged.
        exiting = [pid for pid in holders if not _argv(pid)]
        foreign = [pid for pid in holders if pid not in exiting and not is_own_wireguard_go(pid, interface)]
        if foreign:
            return f"held by {', '.join(describe(pid) for pid in foreign)}"
        if exiting and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        if time.monotonic() >= deadline:
            if terminated:
                return f"still held by {', '.join(describe(pid) for pid in holders)} of our own"
            for pid in holders:  # a previous run's device for this very interface: ours to end
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
            terminated, deadline = True, time.monotonic() + term_wait_s
        time.sleep(0.05)
