#!/usr/bin/env bash
# Run the herder on this host with Compose (deploy/compose.yml):
#
#   bash deploy/compose-up.sh          # then http://127.0.0.1:${HERDER_PORT:-8000}/
#
# Builds the images, makes the secrets (deploy/secrets.sh), starts PostgreSQL,
# Redis and the herder. Needs `docker compose` (v2 plugin) or `docker-compose`.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose)
else
  echo "compose-up: neither 'docker compose' nor 'docker-compose' is installed (Debian: apt-get install docker-compose)" >&2
  exit 1
fi
bash deploy/build-images.sh
bash deploy/build-herder-image.sh
HERDER_SECRETS_DIR=$(bash deploy/secrets.sh)
export HERDER_SECRETS_DIR
"${compose[@]}" -f deploy/compose.yml -p "${HERDER_STACK:-herder}" up -d
echo "compose-up: started; the herder answers on http://127.0.0.1:${HERDER_PORT:-8000}/ once healthy"
