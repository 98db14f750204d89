"""Options every command shares, and how they resolve to paths and URLs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_STATE_DIR = Path("~/.lanrage")

StateDirOption = Annotated[
    Path,
    typer.Option("--state-dir", help="State directory (keys, API token, default database); mode 0700.",
                 envvar="LANRAGE_STATE_DIR"),
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL of the event store [default: SQLite in the state directory].",
                 envvar="LANRAGE_DB"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON records instead of a table.")]


class UsageError(Exception):
    """Bad input from the user: printed as one line on stderr, exit status 2."""


def state_dir(path: Path) -> Path:
    """Expand and create the state directory with mode 0700."""
    resolved = path.expanduser()
    resolved.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(resolved, 0o700)
    return resolved


def database_url(db: str | None, state: Path, *, create: bool = True) -> str:
    """The store's URL; with ``create=False`` (read-only commands) nothing on disk is made or changed."""
    if db:
        return db
    directory = state_dir(state) if create else state.expanduser()
    return f"sqlite:///{directory / 'lanrage.db'}"
