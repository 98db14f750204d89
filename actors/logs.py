"""loguru, configured once per process (thespian replaces the stdlib root logger in actors)."""

from __future__ import annotations

import os
import sys

from loguru import logger

from actors.messages import LogSpec

_configured: dict[int, LogSpec] = {}


def configure(spec: LogSpec) -> None:
    pid = os.getpid()
    if _configured.get(pid) == spec:
        return
    logger.remove()
    fmt = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} pid={process} {extra[actor]} | {message}"
    if spec.path:
        logger.add(spec.path, level=spec.level, format=fmt, enqueue=False)
    else:
        logger.add(sys.stderr, level=spec.level, format=fmt)
    logger.configure(extra={"actor": "-"})
    _configured[pid] = spec


__all__ = ["configure", "logger"]
