#!/usr/bin/env bash
# Start what the tests need beside Docker: Redis and PostgreSQL from Debian's
# packages, on loopback only. Idempotent. Prints the URLs to export.
set -euo pipefail

install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v redis-server >/dev/null 2>&1 || install redis-server
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no >/dev/null
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

command -v pg_ctlcluster >/dev/null 2>&1 || install postgresql
cluster=$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  pg_createcluster 15 main >/dev/null
  cluster="15 main"
fi
# shellcheck disable=SC2086
if ! pg_lsclusters -h | awk 'NR==1 {print $4}' | grep -q online; then
  pg_ctlcluster $cluster start
fi
for _ in $(seq 1 50); do
  su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='herder'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"create role herder login createdb password 'herder'\""
echo "REDIS_URL=redis://127.0.0.1:6379/0"
echo "DATABASE_URL=postgres://herder:herder@127.0.0.1:5432/herder"
