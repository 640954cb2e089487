#!/usr/bin/env bash
# Set up, start the services the tests need, and run the whole suite on the
# embedded defaults (SQLite), then the accounts tests again on PostgreSQL.
# Arguments go to the first pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
# Browser tests drive Debian's Chromium (tests/browser.py).
if ! command -v chromium >/dev/null 2>&1; then
  echo "test: installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The compatibility tests (tests/compat) drive clients written with the libraries the
# original's users wrote theirs with: Node's ws (npm) and Go's golang.org/x/net/websocket
# (Debian's package, built in GOPATH mode).
missing=()
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
command -v go >/dev/null 2>&1 || missing+=(golang-go)
[ -d /usr/share/gocode/src/golang.org/x/net/websocket ] || missing+=(golang-golang-x-net-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# tests/deploy/test_compose.py runs deploy/compose.yml with the `docker compose`
# plugin or docker-compose; Debian's docker-compose is installed when neither is there.
compose_tool=$(bash deploy/compose.sh --install)
echo "test: compose tool: $compose_tool"
# npm ci again when the lock file changed since the last install.
lock_sum=$(sha256sum tests/compat/node/package-lock.json | cut -d' ' -f1)
if [ "$(cat tests/compat/node/node_modules/.herder-lock-sum 2>/dev/null)" != "$lock_sum" ]; then
  echo "test: npm ci in tests/compat/node"
  (cd tests/compat/node && npm ci --no-audit --no-fund --silent)
  echo "$lock_sum" > tests/compat/node/node_modules/.herder-lock-sum
fi
services=$(bash deploy/start-services.sh)
redis_url=$(sed -n 's/^REDIS_URL=//p' <<<"$services")
database_url=$(sed -n 's/^DATABASE_URL=//p' <<<"$services")

echo "--- ruff: lint, import order, format"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

export HERDER_TEST_REDIS_URL=$redis_url
# tests/herder/test_workers.py and test_lease.py make (and drop) databases of their own there.
export HERDER_TEST_POSTGRES_URL=${database_url%/*}/postgres
.venv/bin/python -m pytest "$@"
if [ -d tests/accounts ]; then
  echo "--- the accounts tests again, on PostgreSQL"
  DATABASE_URL=$database_url .venv/bin/python -m pytest tests/accounts
fi
