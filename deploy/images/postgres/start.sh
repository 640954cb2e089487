#!/bin/sh
# First start: create the cluster and the herder's role and database
# (password from POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE), then run it.
# The cluster counts as made only once .herder-ready exists: a first start cut
# short is redone from scratch.
set -e
if [ -n "$POSTGRES_PASSWORD_FILE" ]; then POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE"); fi
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE}"
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
bin=/usr/lib/postgresql/15/bin
as_postgres() { su postgres -s /bin/sh -c "$1"; }
if [ ! -f "$PGDATA/.herder-ready" ]; then
  find "$PGDATA" -mindepth 1 -delete
  as_postgres "$bin/initdb -D $PGDATA -U postgres --auth-local=peer --auth-host=scram-sha-256 >/dev/null"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  as_postgres "$bin/pg_ctl -D $PGDATA -o \"-c listen_addresses= -p 5432 -k /run/postgresql\" -w start >/dev/null"
  printf '%s\n' "CREATE ROLE herder LOGIN PASSWORD :'pw';" "CREATE DATABASE herder OWNER herder;" \
    | PW="$POSTGRES_PASSWORD" su postgres -s /bin/sh \
        -c "$bin/psql -q -X -h /run/postgresql -p 5432 -v ON_ERROR_STOP=1 -v pw=\"\$PW\" postgres"
  as_postgres "$bin/pg_ctl -D $PGDATA -m fast -w stop >/dev/null"
  touch "$PGDATA/.herder-ready"
fi
exec su postgres -s /bin/sh -c "exec $bin/postgres -D $PGDATA -p 5432 -k /run/postgresql -c listen_addresses='*'"
