#!/bin/sh
# First start: create the cluster and the herder's role and database
# (password from POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE), then run it.
set -e
if [ -n "$POSTGRES_PASSWORD_FILE" ]; then POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE"); fi
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE}"
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp); echo "$POSTGRES_PASSWORD" > "$pw"; chown postgres "$pw"
  su postgres -s /bin/sh -c "$bin/initdb -D $PGDATA -U postgres --auth-local=peer --auth-host=scram-sha-256 >/dev/null"
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  su postgres -s /bin/sh -c "$bin/pg_ctl -D $PGDATA -o '-c listen_addresses=' -w start >/dev/null"
  su postgres -s /bin/sh -c "psql -q -v ON_ERROR_STOP=1 -v pw=\"$POSTGRES_PASSWORD\"" <<'SQL'
CREATE ROLE herder LOGIN PASSWORD :'pw';
CREATE DATABASE herder OWNER herder;
SQL
  su postgres -s /bin/sh -c "$bin/pg_ctl -D $PGDATA -m fast -w stop >/dev/null"
fi
exec su postgres -s /bin/sh -c "exec $bin/postgres -D $PGDATA -c listen_addresses='*'"
