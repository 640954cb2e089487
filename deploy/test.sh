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
services=$(bash deploy/start-services.sh)
redis_url=$(sed -n 's/^REDIS_URL=//p' <<<"$services")
database_url=$(sed -n 's/^DATABASE_URL=//p' <<<"$services")

export HERDER_TEST_REDIS_URL=$redis_url
# tests/herder/test_workers.py and test_lease.py make (and drop) databases of their own there.
export HERDER_TEST_POSTGRES_URL=${database_url%/*}/postgres
.venv/bin/python -m pytest "$@"
if [ -d tests/accounts ]; then
  echo "--- the accounts tests again, on PostgreSQL"
  DATABASE_URL=$database_url .venv/bin/python -m pytest tests/accounts
fi
