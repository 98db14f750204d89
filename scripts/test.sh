#!/usr/bin/env bash
# Sets everything up (packages, venv, PostgreSQL) and runs the whole test suite
# as root: unit, property, store (SQLite and PostgreSQL) and network-lab tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export THESPIAN_BASE_IPADDR=127.0.0.1
export LANRAGE_TEST_PG_URL="${LANRAGE_TEST_PG_URL:-postgresql+psycopg://lanrage:lanrage@127.0.0.1:5432/lanrage}"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
