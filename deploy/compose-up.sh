#!/usr/bin/env bash
# Run the herder on this host with Compose (deploy/compose.yml):
#
#   bash deploy/compose-up.sh          # then http://127.0.0.1:${HERDER_PORT:-8000}/
#   bash deploy/compose.sh down        # stop it (--volumes: and drop its data)
#
# Builds the images (each only when its inputs changed), makes the secrets
# (deploy/secrets.sh), starts PostgreSQL, Redis and the herder, and returns
# once the herder is healthy (its /readyz passes; HERDER_COMPOSE_WAIT seconds
# at most, default 300). Uses the `docker compose` plugin or `docker-compose`,
# and installs Debian's docker-compose when neither is there (deploy/compose.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'compose-up: %s\n' "$*"; }

tool=$(bash deploy/compose.sh --install)
say "using $tool"
bash deploy/build-images.sh
bash deploy/build-herder-image.sh
HERDER_SECRETS_DIR=$(bash deploy/secrets.sh)
export HERDER_SECRETS_DIR
# Compose v1 has no nested defaults: the public URL follows the port here.
export HERDER_PUBLIC_URL=${HERDER_PUBLIC_URL:-http://127.0.0.1:${HERDER_PORT:-8000}}
bash deploy/compose.sh up -d

herder=$(bash deploy/compose.sh ps -q herder)
deadline=$((SECONDS + ${HERDER_COMPOSE_WAIT:-300}))
while :; do
  health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$herder")
  [ "$health" = healthy ] && break
  if [ "$health" = unhealthy ] || [ "$health" = exited ] || [ "$SECONDS" -ge "$deadline" ]; then
    say "the herder is $health; its last lines:"
    docker logs --tail 30 "$herder" >&2 || true
    exit 1
  fi
  sleep 1
done
say "the herder is healthy on ${HERDER_PUBLIC_URL} (${HERDER_STACK:-herder}: bash deploy/compose.sh ps)"
