"""One agent per state directory: ``serve`` holds a lock on ``<state-dir>/agent.lock``.

Two agents on one state directory share its keys, its API token, its database and (with
the same flags) its interface: the second one's start and exit broke the first (its
interface removed, its token rewritten, its control session stolen). So the lock is
taken before anything else is touched, and a second ``serve`` stops at once, naming the
PID of the one that holds it.

The lock is an ``fcntl`` lock on an open file: the kernel drops it when the last process
holding the file ends, so a crashed agent leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "agent.lock"
MAX_PID_TEXT = 32  # the lock file holds a PID; anything longer is not one


class AgentAlreadyRunning(Exception):
    """Another agent holds the state directory's lock."""


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK_NAME


def holder(state_dir: Path) -> int | None:
    """The PID written by the agent that holds (or last held) the lock, if readable."""
    try:
        fd = os.open(lock_path(state_dir), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        text = os.read(fd, MAX_PID_TEXT).decode("ascii", errors="replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def hold_state_dir(state_dir: Path) -> int:
    """Take the state directory's lock for this process's lifetime; returns its descriptor.

    Raises ``AgentAlreadyRunning`` when another process holds it, having changed nothing.
    """
    path = lock_path(state_dir)
    # No symlink is followed: the state directory may be writable by the service account.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = holder(state_dir)
        running = f"PID {pid}" if pid is not None else "another process"
        raise AgentAlreadyRunning(
            f"an agent ({running}) already runs on the state directory {state_dir} (it holds {path}); "
            "stop it first, or give this one its own --state-dir") from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
