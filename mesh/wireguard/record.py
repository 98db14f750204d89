"""The small record of an interface we made: ``<state_dir>/wireguard/<name>.json``.

No secrets: the public key, the wireguard-go PID (and start time, against PID reuse),
and the peers that are ours. Every change is a locked read-modify-write, so the agent
and the edge's I/O workers that configure peers through the UAPI socket
(``PeerController``) can share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class InterfaceRecord:
    name: str
    public_key: str
    implementation: str
    netns: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    managed_peers: list[str] = field(default_factory=list)


def record_path(state_dir: Path, name: str) -> Path:
    return state_dir / "wireguard" / f"{name}.json"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load(path: Path) -> InterfaceRecord | None:
    try:
        return InterfaceRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write(path: Path, record: InterfaceRecord) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(record), out)
    tmp.replace(path)


def update(path: Path, change: Callable[[InterfaceRecord | None], InterfaceRecord | None]
           ) -> InterfaceRecord | None:
    """Apply ``change`` to the stored record under the lock; None from it deletes the record."""
    with locked(path):
        new = change(load(path))
        if new is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            _write(path, new)
        return new
