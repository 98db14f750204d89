"""The README's SQL examples print the right rows, on docs/store.md's example log.

The log (tests/migrations/test_examples.py) has Bob direct at 10 ms for 14 min and 100 ms
for 1 min (16 ms weighted by time, 55 ms as an average of rows), and its last change at
74305 s after 10:00 UTC on 2026-11-25; local time here is Europe/Berlin (CET).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.migrations.test_examples import ZONE, fill
from tests.test_readme import ROOT, readme_block


def _run(command: str, state: Path) -> str:
    argv = shlex.split(command, comments=True)
    if argv[0] == "lanrage":
        argv = [sys.executable, str(ROOT / "cli.py"), *argv[1:], "--state-dir", str(state)]
    else:
        argv = [re.sub(r"^~/\.lanrage/", f"{state}/", arg) for arg in argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "THESPIAN_BASE_IPADDR": "127.0.0.1",
                               "HOME": str(state.parent), "TZ": ZONE})
    assert done.returncode == 0, (command, done.stderr)
    return done.stdout


def test_the_readme_sql_examples_answer_right(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    fill(f"sqlite:///{state / 'lanrage.db'}")
    sql = [command for command in readme_block() if "SELECT" in command]
    assert [shlex.split(command)[0] for command in sql] == ["lanrage", "sqlite3"]

    timeline = _run(sql[0], state)
    newest = next(line for line in timeline.splitlines() if "2026-11-26 07:38:25.000 CET" in line)
    assert re.search(r"Bob\s*│\s*connected\s*│\s*direct\s*│\s*305(\.0)?\s*│\s*first probe answered",
                     newest), newest
    # The period before the node stopped for the night ends at the stop: 800 s, not 20 h.
    stopped = next(line for line in timeline.splitlines() if "2026-11-25 11:20:00.000 CET" in line)
    assert re.search(r"Bob\s*│\s*connected\s*│\s*relay\s*│\s*800(\.0)?\s*│", stopped), stopped
    assert timeline.rstrip().endswith("\n15 rows")  # Bob's 12 and Carol's 3

    latency = sorted(_run(sql[1], state).splitlines())
    assert latency == ["Bob|direct|16.0", "Bob|relay|40.0", "Carol|direct|12.0"]
