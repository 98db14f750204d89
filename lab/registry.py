"""The record of every lab on this machine, and the removal of leftovers.

Each lab writes ``<state dir>/<run id>.json`` *before* it creates its first
namespace; namespaces are named ``lrl-<run id>-<role>``. A run is a leftover when
its owning process is dead (same PID and start time) and it is not persistent
(``lab up``), or when its record is missing. Labs still owned by a live process —
other people's labs — are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.shell import destroy_netns, list_netns, process_alive

NETNS_PREFIX = "lrl-"


def state_dir() -> Path:
    path = Path(os.environ.get("LANRAGE_LAB_STATE", "/run/lanrage-lab"))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass
class RunRecord:
    run_id: str
    owner_pid: int
    owner_start: int | None
    persistent: bool
    created_at: float
    workdir: str
    topology: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return state_dir() / f"{self.run_id}.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def owner_alive(self) -> bool:
        return process_alive(self.owner_pid, self.owner_start)

    @property
    def is_leftover(self) -> bool:
        return not self.persistent and not self.owner_alive


def load(run_id: str) -> RunRecord | None:
    path = state_dir() / f"{run_id}.json"
    try:
        return RunRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def all_records() -> list[RunRecord]:
    records = []
    for path in sorted(state_dir().glob("*.json")):
        record = load(path.stem)
        if record is not None:
            records.append(record)
    return records


def run_namespaces(run_id: str, existing: list[str] | None = None) -> list[str]:
    names = list_netns() if existing is None else existing
    return [name for name in names if name.startswith(f"{NETNS_PREFIX}{run_id}-")]


def run_id_of(netns: str) -> str | None:
    if not netns.startswith(NETNS_PREFIX):
        return None
    return netns[len(NETNS_PREFIX):].split("-", 1)[0] or None


def cleanup_leftovers() -> list[str]:
    """Remove every dead lab run; returns the run ids removed."""
    namespaces = list_netns()
    run_ids = {rid for rid in map(run_id_of, namespaces) if rid}
    records = {record.run_id: record for record in all_records()}
    removed = []
    for run_id in sorted(run_ids | set(records)):
        record = records.get(run_id)
        if record is not None and not record.is_leftover:
            continue
        destroy_netns(run_namespaces(run_id, namespaces), run_id)
        if record is not None:
            _remove_workdir(record.workdir)
            record.remove()
        removed.append(run_id)
    return removed


def _remove_workdir(path: str) -> None:
    import shutil

    if path and Path(path).name.startswith("lanrage-lab-") and os.environ.get("LANRAGE_LAB_KEEP") != "1":
        shutil.rmtree(path, ignore_errors=True)
