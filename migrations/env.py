"""Alembic environment: the only way LANrage's schema changes.

``store.migrate(url)`` passes an open connection in ``config.attributes``;
the ``alembic`` command line builds one from ``sqlalchemy.url`` or ``LANRAGE_DB``.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import context

from store.engine import parse_url, sync_engine
from store.schema import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("LANRAGE_DB")
    if url:
        return url
    state = Path(os.environ.get("LANRAGE_STATE_DIR", "~/.lanrage")).expanduser()
    return f"sqlite:///{state / 'lanrage.db'}"


def run_offline() -> None:
    context.configure(url=parse_url(_url()).url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sync_engine(parse_url(_url()), role="writer")
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      transactional_ddl=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Processes starting at once on a fresh database take turns; the later ones then
            # find the schema current. (SQLite's BEGIN IMMEDIATE does the same there.)
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7244663)")
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
