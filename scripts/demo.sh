#!/usr/bin/env bash
# The LANrage demo (run as root): sets everything up, then a real party over WireGuard
# through three kinds of NAT in a network-namespace lab, narrated. About a minute and a half.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export THESPIAN_BASE_IPADDR=127.0.0.1
exec .venv/bin/python -m demo.run "$@"
