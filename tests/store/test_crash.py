"""Crash test: a writer process SIGKILLed at random moments loses no acknowledged append.

The writer (a forked child, so that it starts in milliseconds) appends from
three threads, so kills land inside group commits too, and writes a line to a
file only after ``append`` has returned. After every kill the database must
pass ``PRAGMA integrity_check`` and hold every acknowledged event, gapless.

Each round writes its acknowledgements to a file of its own: a SIGKILL can cut a
``write`` short (Linux stops a write when a fatal signal is pending), so the last
line of a round may be torn, and only lines that end in a newline count.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

from store import PendingEvent, open_store
from tests.store.helpers import left, metrics

ROUNDS = 60


def _writer(url: str, acked_path: Path, synchronous: str, seed: int) -> None:
    """Runs in the child: append until killed, logging every acknowledged event."""
    log = os.open(acked_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    store = open_store(url, synchronous=synchronous, upgrade=False)  # type: ignore[arg-type]

    def work(stream: str, worker_seed: int) -> None:
        rng = random.Random(worker_seed)
        position = store.stream_position(stream)
        while True:
            items = [PendingEvent(metrics(stream) if rng.random() < 0.5 else left(position))
                     for _ in range(rng.choice((1, 1, 2, 5, 20)))]
            records = store.append(stream, items, position)
            position = records[-1].stream_position
            os.write(log, "".join(f"{r.stream_id} {r.stream_position} {r.event_id}\n"
                                  for r in records).encode())

    threads = [threading.Thread(target=work, args=(f"peer:p:{n}", seed * 10 + n), daemon=True)
               for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(30)  # never reached in the test: the parent kills us long before


def _check(path: Path, acked: dict[tuple[str, int], str]) -> None:
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = connection.execute(
            "SELECT global_position, stream_id, stream_position, json_extract(metadata, '$.event_id')"
            " FROM events ORDER BY global_position").fetchall()
        head = connection.execute("SELECT last_global_position FROM event_log_head").fetchone()[0]
    finally:
        connection.close()
    stored = {(stream, position): event_id for _, stream, position, event_id in rows}
    missing = [key for key, event_id in acked.items() if stored.get(key) != event_id]
    assert not missing, f"acknowledged events lost: {missing[:5]}"
    globals_ = [row[0] for row in rows]
    assert globals_ == sorted(set(globals_)) and (not rows or head == globals_[-1])
    by_stream: dict[str, list[int]] = {}
    for _, stream, position, _ in rows:
        by_stream.setdefault(stream, []).append(position)
    for positions in by_stream.values():
        assert positions == list(range(1, len(positions) + 1))


def test_sigkilled_writer_never_loses_an_acknowledged_append(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    url = f"sqlite:///{path}"
    open_store(url).close()
    acked: dict[tuple[str, int], str] = {}
    rng = random.Random(20261125)
    rounds_with_acks = 0
    for round_ in range(ROUNDS):
        before = len(acked)
        acked_path = tmp_path / f"acked-{round_}.log"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns into pytest
            try:
                _writer(url, acked_path, "FULL" if round_ % 2 else "NORMAL", round_)
            finally:
                os._exit(0)
        # Kill at a random moment after the writer is under way (a loaded machine can take
        # a while to start it), so every round kills appends in flight.
        deadline = time.monotonic() + 10
        while (not acked_path.exists() or acked_path.stat().st_size == 0) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.08))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "writer died on its own"
        if acked_path.exists():
            complete = acked_path.read_text().rpartition("\n")[0]
            for line in complete.splitlines():
                stream, position, event_id = line.split(" ")
                acked[(stream, int(position))] = event_id
        rounds_with_acks += len(acked) > before
        if round_ % 10 == 9:
            _check(path, acked)
    _check(path, acked)
    assert rounds_with_acks == ROUNDS, "a writer was killed before it acknowledged anything"
    assert len(acked) > 1000
