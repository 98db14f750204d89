#!/usr/bin/env bash
# Starts the local PostgreSQL cluster and makes sure the `lanrage` role and
# database exist. Prints nothing on success; idempotent.
set -euo pipefail
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 50); do
    su postgres -c "pg_isready -q" && break
    sleep 0.2
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='lanrage'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE lanrage LOGIN PASSWORD 'lanrage' CREATEDB\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='lanrage'\"" | grep -q 1 \
    || su postgres -c "psql -qc 'CREATE DATABASE lanrage OWNER lanrage'"
