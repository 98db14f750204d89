"""A short run of bench/fuzz.py: every network and disk decoder, 2,000 inputs each, no crash.

The full run is `bench/fuzz.py --runs 1000000` (its last output: docs/benchmarks.md).
"""

from __future__ import annotations

import subprocess
import sys

from bench.result import RESULT_PREFIX
from tests.e2e.harness import ROOT

DECODERS = {"stun", "relay", "punch", "control", "broadcast", "invite", "events", "discovery", "accept",
            "packets"}
SHORT_RUNS = 2_000 * len(DECODERS)  # 2,000 per decoder: a few seconds each


def test_a_short_fuzz_run_of_every_decoder_finds_nothing() -> None:
    done = subprocess.run([sys.executable, "bench/fuzz.py", "--runs", str(SHORT_RUNS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    # A header, a row per decoder, the total, and the result line bench/all.py reads.
    assert done.stdout.splitlines()[-1].startswith(RESULT_PREFIX)
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:-2]}
    assert set(rows) == DECODERS
    for name, row in rows.items():
        assert int(row[1]) >= SHORT_RUNS // len(DECODERS) and row[3] == "ok", (name, row)
