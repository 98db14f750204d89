"""The CLI's commands, one module per concern; ``cli.py`` registers them all."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import typer

# Which module defines each top-level command. Typer inspects every registered function
# at start-up, so a client command registers only its own module; help and unknown
# names get them all.
COMMAND_MODULES = {
    "events": "history", "replay": "history", "history": "history", "sql": "history", "db": "history",
    "serve": "node", "control-server": "node", "status": "node", "party": "node", "dashboard": "node",
    "relay-server": "relay", "lab": "lab", "diagnose": "diagnose",
}
ALL_MODULES = ("history", "diagnose", "node", "relay", "lab")


def register_all(app: typer.Typer, argv: Sequence[str] | None = None) -> None:
    """Register every command, or only the module of ``argv``'s command when it names one."""
    first = next((arg for arg in argv or () if not arg.startswith("-")), None)
    wanted = (COMMAND_MODULES[first],) if first in COMMAND_MODULES else ALL_MODULES
    for name in wanted:
        importlib.import_module(f"commands.{name}").register(app)
