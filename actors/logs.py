"""loguru, configured once per process (thespian replaces the stdlib root logger in actors).

In an actor process (a fork) every inherited sink is dropped and ours is added. In the
process that imported this module first (the agent, or a test on simpleSystemBase)
the program's own sinks stay; only ours is added or replaced.
"""

from __future__ import annotations

import os
import sys

from loguru import logger

from actors.messages import LogSpec
from mesh.text import one_line

_MAIN_PID = os.getpid()
_configured: dict[int, tuple[LogSpec, int | None]] = {}
FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} pid={process} {extra[actor]} | {message}"


def configure(spec: LogSpec) -> None:
    pid = os.getpid()
    current = _configured.get(pid)
    if current is not None and current[0] == spec:
        return
    if pid != _MAIN_PID and current is None:
        logger.remove()  # sinks inherited from the parent process
    if current is not None and current[1] is not None:
        logger.remove(current[1])
    if pid == _MAIN_PID and spec.program_sinks:
        logger.configure(extra={"actor": "-"})
        _configured[pid] = (spec, None)
        return
    sink = spec.path if spec.path else sys.stderr
    handler = logger.add(sink, level=spec.level, format=FORMAT)  # type: ignore[arg-type]
    logger.configure(extra={"actor": "-"}, patcher=one_line)
    _configured[pid] = (spec, handler)


__all__ = ["configure", "logger"]
