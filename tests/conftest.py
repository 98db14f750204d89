"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")

import events  # noqa: F401  (registers every event type)

DEFAULT_PG_URL = "postgresql+psycopg://lanrage:lanrage@127.0.0.1:5432/lanrage"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    The server is the one `scripts/postgres.sh` starts; a missing server is a
    failure, never a skip.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(os.environ.get("LANRAGE_TEST_PG_URL", DEFAULT_PG_URL))
    name = f"lanrage_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception:
            # FORCE may not terminate an autovacuum worker (another role) on the test
            # database; a plain DROP makes autovacuum step aside. Retry briefly.
            _drop_plainly(admin, name)
        admin.dispose()


def _drop_plainly(admin, name: str) -> None:  # type: ignore[no-untyped-def]
    import time

    from sqlalchemy import text

    for attempt in range(40):
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            return
        except Exception:
            if attempt == 39:
                raise
            time.sleep(0.25)


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Runs a test once against SQLite and once against the real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def require_root() -> None:
    """Lab tests need root for namespaces; without it they fail loudly, never skip."""
    if os.geteuid() != 0:
        pytest.fail("lab tests must run as root (they build network namespaces)")
