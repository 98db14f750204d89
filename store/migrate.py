"""Run alembic programmatically: ``migrate(url)`` brings a database to the head revision."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection

from store.base import StoreError
from store.engine import Target, check_sqlite_file, parse_url, sync_engine
from store.errors import translated

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_lock = threading.Lock()
_heads: tuple[str, ...] | None = None


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> tuple[str, ...]:
    global _heads
    if _heads is None:
        _heads = tuple(ScriptDirectory.from_config(alembic_config()).get_heads())
    return _heads


def current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


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
        engine = sync_engine(target, role="writer")
        try:
            with translated(target.where), engine.connect() as connection:
                config = alembic_config(connection)
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
