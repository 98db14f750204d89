"""Logs through loguru, human or JSON, on stderr or to a file. Never secrets."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from loguru import logger

from mesh.text import one_line

FORMATS = ("human", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure(level: str = "INFO", fmt: str = "human", path: Path | None = None) -> None:
    logger.remove()
    logger.configure(patcher=one_line)  # names from the network never forge or split a record
    sink = str(path) if path is not None else sys.stderr
    if fmt == "json":
        logger.add(sink, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sink, level=level, backtrace=False, diagnose=False, format=_human)
    # uvicorn and websockets log through the standard library: send them to loguru too.
    logging.basicConfig(handlers=[_Intercept()], level=logging.WARNING, force=True)


def _human(record: Any) -> str:
    """One line; an actor's lines name the actor (its stream), as in the actors' own format."""
    actor = record["extra"].get("actor")
    named = "{extra[actor]} | " if actor and actor != "-" else ""
    return "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} " + named + "{message}\n{exception}"


class _Intercept(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())
