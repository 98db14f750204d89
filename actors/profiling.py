"""An opt-in CPU profile of the agent, for benchmarks: ``LANRAGE_PROFILE=DIR`` turns it on.

Every ``WRITE_EVERY_S`` it writes ``DIR/threads.json``: the CPU seconds each kind of
thread used since start (its name without the trailing number or session id; the
exited threads of a kind keep their share), and the effects the edge ran, by type.
With ``LANRAGE_PROFILE_CALLS=1`` too, the actor thread writes a ``cProfile`` of itself
to ``DIR/actors-<unix time>.prof`` every few seconds (which slows that thread several times over). Off (the
default), nothing of this runs.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

ENV = "LANRAGE_PROFILE"
CALLS_ENV = "LANRAGE_PROFILE_CALLS"
WRITE_EVERY_S = 5.0

effects: Counter[str] = Counter()
effect_cpu_s: Counter[str] = Counter()  # the CPU each kind of effect used on its worker
enabled = bool(os.environ.get(ENV))


def directory() -> Path | None:
    value = os.environ.get(ENV, "")
    return Path(value) if value else None


def kind(name: str) -> str:
    return re.sub(r"([-_][0-9a-f-]*)$", "", name) or name


def start() -> None:
    """Start the writer thread when the knob is set."""
    target = directory()
    if target is None:
        return
    target.mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(target=_write_forever, args=(target,), name="lanrage-profile", daemon=True)
    thread.start()


def _write_forever(target: Path) -> None:
    seen: dict[int, tuple[str, float]] = {}  # thread ident -> (kind, CPU seconds at the last look)
    while True:
        time.sleep(WRITE_EVERY_S)
        for thread in threading.enumerate():
            if thread.ident is None or thread is threading.current_thread():
                continue
            try:
                used = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (OSError, ProcessLookupError):
                continue
            seen[thread.ident] = (kind(thread.name), used)
        totals: Counter[str] = Counter()
        for name, used in seen.values():
            totals[name] += used
        process = time.process_time()
        (target / "threads.json").write_text(json.dumps(
            {"at": time.time(), "process_cpu_s": process, "threads_cpu_s": dict(totals),
             "effects": dict(effects), "effect_cpu_s": dict(effect_cpu_s)}, indent=1))


class ActorThreadProfile:
    """A ``cProfile`` of the actor thread: one file per ``WRITE_EVERY_S``, ``DIR/actors-<unix time>.prof``."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._begin()

    def _begin(self) -> None:
        import cProfile

        self.profile = cProfile.Profile()
        self.written_at = time.monotonic()
        self.profile.enable()

    @classmethod
    def start(cls) -> ActorThreadProfile | None:
        target = directory()
        return cls(target) if target is not None and os.environ.get(CALLS_ENV) == "1" else None

    def maybe_write(self) -> None:
        if time.monotonic() - self.written_at < WRITE_EVERY_S:
            return
        self.profile.disable()
        self.profile.dump_stats(self.target / f"actors-{time.time():.0f}.prof")
        self._begin()
