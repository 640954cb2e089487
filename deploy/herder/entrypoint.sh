#!/bin/sh
# The herder image's entrypoint: migrate (retried: replicas starting together
# race to create the same tables; the loser succeeds on its next try), then run
# the command (herd). Settings come from the environment or *_FILE secrets.
set -e
# As PID 1, sh ignores SIGTERM unless it traps it: a stop during the migration
# would wait for the engine's kill timeout. (The trap runs once the current
# command ends; `exec` below hands signals to herd itself.)
trap 'exit 143' TERM INT
# The database URL from the PostgreSQL password secret, unless given whole
# (DATABASE_URL or DATABASE_URL_FILE).
if [ -z "$DATABASE_URL" ] && [ -z "$DATABASE_URL_FILE" ] && [ -n "$POSTGRES_PASSWORD_FILE" ]; then
  DATABASE_URL="postgres://herder:$(cat "$POSTGRES_PASSWORD_FILE")@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}/herder"
  export DATABASE_URL
fi
if [ "${HERDER_MIGRATE:-1}" = "1" ]; then
  tries=0
  until python3 manage.py migrate --no-input -v 0; do
    tries=$((tries + 1))
    [ "$tries" -ge 30 ] && exit 1
    sleep 2
  done
fi
exec "$@"
