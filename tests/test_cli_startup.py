"""The client commands stay light: only their own module is registered, no heavy import at start.

Start-up time itself is measured by bench/cli.py; this checks the causes it depends on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from commands import ALL_MODULES, COMMAND_MODULES
from lab.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
# Imported by the agent, the servers and the store; never needed to print help, call the local
# agent or print its status. (pydantic is typer's own import from 0.25 on; the lock pins 0.24.)
HEAVY = ("thespian", "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "pyroute2", "rich", "httpx",
         "asyncio", "loguru", "websockets", "cryptography", "orjson")


def test_every_top_level_command_is_mapped_to_its_module() -> None:
    import typer.main

    import cli

    everything = cli.build_app(None)
    names = set(typer.main.get_command(everything).commands)  # type: ignore[attr-defined]
    assert names == set(COMMAND_MODULES)
    assert set(COMMAND_MODULES.values()) == set(ALL_MODULES)
    for name in names:
        registered = typer.main.get_command(cli.build_app([name, "--help"])).commands  # type: ignore[attr-defined]
        assert name in registered and len(registered) < len(names), name


@pytest.mark.parametrize("args", [["--help"], ["status", "--api", "127.0.0.1:{port}"], ["party", "--help"],
                                  ["party", "join", "--help"], ["history", "--help"], ["sql", "--help"]])
def test_client_commands_import_nothing_heavy(args: list[str]) -> None:
    argv = [arg.format(port=free_port()) for arg in args]
    script = ("import contextlib, io, json, sys, cli\n"
              "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
              f"    status = cli.main({argv!r})\n"
              "print(json.dumps([status, sorted(sys.modules)]))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    status, modules = json.loads(done.stdout)
    assert status == (2 if args[0] == "status" else 0)  # no agent listens on that port
    loaded = sorted({name.split(".")[0] for name in modules} & set(HEAVY))
    assert loaded == [], f"{' '.join(argv)} imported {loaded}"
