#!/usr/bin/env bash
# Installs everything LANrage needs on a fresh Debian machine (run as root):
# the system packages, a Python venv in .venv with requirements.txt and this
# checkout installed in it (editable: `.venv/bin/lanrage` runs this checkout's code),
# and a running PostgreSQL 15 cluster with a `lanrage` role and database.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(wireguard-go wireguard-tools iproute2 iptables conntrack stun-server
                 iputils-ping iperf3 postgresql python3-venv procps sqlite3 chromium
                 miniupnpd miniupnpd-iptables)

missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # miniupnpd runs only inside lab routers: a system-wide service the package may have started goes.
    if [[ " ${missing[*]} " == *" miniupnpd "* ]]; then
        if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
            systemctl disable --now miniupnpd.service >/dev/null 2>&1 || true
        elif [[ -x /etc/init.d/miniupnpd ]]; then
            /etc/init.d/miniupnpd stop >/dev/null 2>&1 || true
            update-rc.d miniupnpd disable >/dev/null 2>&1 || true
        fi
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# The checkout itself, editable; skipped when .venv's `lanrage` already runs this checkout.
root="$(pwd)"
if [[ ! -x .venv/bin/lanrage ]] || ! (cd / && "$root/.venv/bin/python" -c \
        "import cli, sys; sys.exit(cli.__file__ != '$root/cli.py')" 2>/dev/null); then
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
fi

bash scripts/postgres.sh
