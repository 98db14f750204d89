"""Run alembic programmatically: ``migrate(url)`` brings a database to the head revision.

Whether a database is current is read without alembic (its version table against the
revisions the files in ``migrations/versions`` declare), so a long-running node whose
database is up to date never imports alembic: about 11 MB of its memory.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, inspect, text

from store.base import StoreError
from store.engine import Target, check_sqlite_file, parse_url, sync_engine
from store.errors import translated

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_lock = threading.Lock()
# Processes that start together on a fresh database queue behind the first one's migration,
# which holds SQLite's write lock for all of its revisions: wait for it, not the usual 5 s.
MIGRATION_WAIT_S = 60.0
_heads: tuple[str, ...] | None = None


if TYPE_CHECKING:
    from alembic.config import Config

_REVISION = re.compile(r'^revision: str = "([^"]+)"', re.M)
_DOWN = re.compile(r'^down_revision: str \| None = (?:"([^"]+)"|None)', re.M)


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> tuple[str, ...]:
    """The revisions no other revision builds on, read from the migration files."""
    global _heads
    if _heads is None:
        revisions: set[str] = set()
        parents: set[str] = set()
        for path in (MIGRATIONS / "versions").glob("*.py"):
            source = path.read_text()
            found, down = _REVISION.search(source), _DOWN.search(source)
            if found is None or down is None:
                raise StoreError(f"migration {path.name} declares no revision and down_revision")
            revisions.add(found.group(1))
            if down.group(1):
                parents.add(down.group(1))
        _heads = tuple(sorted(revisions - parents))
    return _heads


def current_revisions(connection: Connection) -> tuple[str, ...]:
    if not inspect(connection).has_table("alembic_version"):
        return ()
    rows = connection.execute(text("SELECT version_num FROM alembic_version"))
    return tuple(sorted(row[0] for row in rows))


def _target(url: str | Target) -> Target:
    return url if isinstance(url, Target) else parse_url(url)


def migrate(url: str | Target, revision: str = "head") -> str | None:
    """Upgrade the database at ``url`` to ``revision``; returns the revision it ended at."""
    return _run(_target(url), "upgrade", revision)


def downgrade(url: str | Target, revision: str) -> str | None:
    return _run(_target(url), "downgrade", revision)


def current(url: str | Target) -> str | None:
    target = _target(url)
    engine = sync_engine(target, role="reader")
    try:
        with translated(target.where), engine.connect() as connection:
            revisions = current_revisions(connection)
    finally:
        engine.dispose()
    return revisions[0] if revisions else None


def is_current(url: str | Target) -> bool:
    target = _target(url)
    if target.dialect == "sqlite" and target.path is not None and not target.path.exists():
        return False
    engine = sync_engine(target, role="reader")
    try:
        with translated(target.where), engine.connect() as connection:
            return current_revisions(connection) == head_revisions()
    finally:
        engine.dispose()


def _run(target: Target, direction: str, revision: str) -> str | None:
    if target.dialect == "sqlite":
        check_sqlite_file(target, must_exist=False)
    # One migration at a time in this process; alembic's own transaction (and, on
    # SQLite, BEGIN IMMEDIATE) keeps other processes out.
    with _lock:
        engine = sync_engine(target, role="writer", busy_timeout=MIGRATION_WAIT_S)
        try:
            with translated(target.where), engine.connect() as connection:
                from alembic import command
                from alembic.util.exc import CommandError

                config: Any = alembic_config(connection)
                try:
                    if direction == "upgrade":
                        command.upgrade(config, revision)
                    else:
                        command.downgrade(config, revision)
                except CommandError as error:
                    found = current_revisions(connection)
                    raise StoreError(f"cannot migrate database {target.where} (at revision "
                                     f"{', '.join(found) or 'none'}) to {revision}: {error}") from None
                revisions = current_revisions(connection)
        finally:
            engine.dispose()
    return revisions[0] if revisions else None


def migrate_apart(url: str, timeout_s: float = 300.0) -> None:
    """``migrate(url)`` in a child process, so that alembic never loads into a long-running one.

    A StoreError carries the child's last line (the error ``migrate`` raised there).
    """
    import subprocess
    import sys

    if is_current(url):
        return
    try:
        done = subprocess.run([sys.executable, "-m", "store.migrate", url], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise StoreError(f"migrating {_target(url).where} took longer than {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StoreError(lines[-1] if lines else f"migrating {_target(url).where} failed")


if __name__ == "__main__":
    import sys

    try:
        migrate(sys.argv[1])
    except StoreError as error:
        sys.exit(str(error))
