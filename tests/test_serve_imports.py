"""A node pays in memory for every module it imports: `serve` loads the servers (control,
relay), SQLAlchemy's asyncio engine, PostgreSQL's driver and the migrations only when it
uses them.

The memory itself (RSS after the import, ``python -X importtime``) is measured by hand, see
docs/benchmarks.md; this checks the causes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Loaded only by what uses them: `control-server`/`host`, `relay-server`/`host`, the API's
# history routes, a PostgreSQL store, a database that is not at the head revision.
ON_USE = ("mesh.control.server", "mesh.relay.server", "sqlalchemy.ext.asyncio", "sqlalchemy.orm", "aiosqlite",
          "psycopg", "alembic")


def loaded_by(code: str) -> list[str]:
    script = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {"THESPIAN_BASE_IPADDR": "127.0.0.1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True, env=env)
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_the_serve_path_loads_no_server_no_async_engine_no_postgres_and_no_migrations(tmp_path: Path) -> None:
    """What `serve` imports, and its store opened on SQLite at the head revision (a node's
    every start but its first)."""
    database = f"sqlite:///{tmp_path / 'lanrage.db'}"
    created = loaded_by(f"from store import open_store\nopen_store({database!r}).close()")
    assert "alembic" in created  # a new database is migrated
    modules = loaded_by(f"import agent.node, commands.node\nfrom store import open_store\n"
                        f"open_store({database!r}).close()")
    assert "agent.node" in modules
    loaded = [name for name in ON_USE if name in modules]
    assert loaded == [], f"the serve path loaded {loaded}"


@pytest.mark.parametrize(("package", "name", "module"), [
    ("mesh.control", "ControlServer", "mesh.control.server"),
    ("mesh.control", "ServerConfig", "mesh.control.server"),
    ("mesh.relay", "RelayServer", "mesh.relay.server"),
    ("mesh.relay", "RelayConfig", "mesh.relay.server"),
])
def test_a_server_loads_when_it_is_used(package: str, name: str, module: str) -> None:
    modules = loaded_by(f"from {package} import {name}\nassert {name}.__module__ == {module!r}")
    assert module in modules


def test_a_name_the_package_does_not_have_is_still_an_attribute_error() -> None:
    import mesh.control
    import mesh.relay

    with pytest.raises(AttributeError):
        _ = mesh.control.NoSuchThing  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = mesh.relay.NoSuchThing  # type: ignore[attr-defined]
