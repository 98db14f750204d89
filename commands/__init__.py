"""The CLI's commands, one module per concern; ``cli.py`` registers them all."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer) -> None:
    from commands import diagnose, history, lab, node, relay

    for module in (history, diagnose, lab, node, relay):
        module.register(app)
