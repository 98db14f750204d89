#!/usr/bin/env bash
# Runs the test suite, or the test files and ids given, N times in a row, each time on a
# fresh clone of this checkout's HEAD, and prints the failures per test:
#
#   bash scripts/repeat.sh N [--setup] [PYTEST ARGS...]
#   bash scripts/repeat.sh 10 tests/faults tests/broadcast
#   bash scripts/repeat.sh 3 --setup                    # the whole suite, as scripts/test.sh runs it
#
# A fresh clone holds only what is committed (no caches, no state, no uncommitted edits).
# Each clone uses this checkout's .venv (linked), unless --setup: then each runs
# scripts/setup.sh and gets its own, as on a new machine (slower). The clones are removed
# at the end; each run's JUnit report and output stay in the directory printed first.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

usage() { echo "usage: bash scripts/repeat.sh N [--setup] [PYTEST ARGS...]" >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[0-9]+$ && "$1" -ge 1 && "$1" -le 100 ]] || usage
runs="$1"
shift
setup=0
if [[ "${1:-}" == "--setup" ]]; then
    setup=1
    shift
fi
[[ $setup -eq 1 || -x .venv/bin/python ]] || { echo "no .venv here: run scripts/setup.sh first, or pass --setup" >&2; exit 2; }

work="$(mktemp -d -t lanrage-repeat.XXXXXX)"
echo "runs of $(git rev-parse --short HEAD) in $work"
export THESPIAN_BASE_IPADDR=127.0.0.1
export LANRAGE_TEST_PG_URL="${LANRAGE_TEST_PG_URL:-postgresql+psycopg://lanrage:lanrage@127.0.0.1:5432/lanrage}"

for ((run = 1; run <= runs; run++)); do
    clone="$work/clone-$run"
    git clone -q --no-hardlinks "$root" "$clone"
    if [[ $setup -eq 1 ]]; then
        (cd "$clone" && bash scripts/setup.sh >"$work/setup-$run.log" 2>&1)
    else
        ln -s "$root/.venv" "$clone/.venv"
    fi
    started=$SECONDS
    status=0
    (cd "$clone" && .venv/bin/python -m pytest -q -p no:cacheprovider --junitxml="$work/run-$run.xml" "$@") \
        >"$work/run-$run.log" 2>&1 || status=$?
    echo "run $run/$runs: exit $status in $((SECONDS - started)) s: $(tail -n 1 "$work/run-$run.log")"
    rm -rf "$clone"
done

"$root/.venv/bin/python" - "$work" "$runs" <<'EOF'
"""Failures (and errors) per test over the runs' JUnit reports."""
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

work, runs = Path(sys.argv[1]), int(sys.argv[2])
failed: Counter[str] = Counter()
reports = 0
for run in range(1, runs + 1):
    report = work / f"run-{run}.xml"
    if not report.exists():
        print(f"run {run}: no report (see {work / f'run-{run}.log'})")
        continue
    reports += 1
    for case in ET.parse(report).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed[f"{case.get('classname')}::{case.get('name')}"] += 1
if not failed:
    print(f"no failures in {reports} of {runs} runs")
for test, count in failed.most_common():
    print(f"{count}/{reports} runs failed: {test}")
sys.exit(1 if failed or reports < runs else 0)
EOF
