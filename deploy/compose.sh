#!/usr/bin/env bash
# Run Compose on deploy/compose.yml as project HERDER_STACK (default herder),
# with whichever tool this host has: the `docker compose` plugin (v2), else
# `docker-compose` (Debian's 1.29). When neither is there, Debian's
# docker-compose is installed (apt-get, as root).
#
#   bash deploy/compose.sh ps                         # or logs herder, down, ...
#   bash deploy/compose.sh down --volumes             # remove it, its data too
#   bash deploy/compose.sh --install                  # only make sure a tool is there; prints it
#
# Variables the file reads (HERDER_SECRETS_DIR, the ports) come from the
# environment; deploy/compose-up.sh sets them before `up`.
set -euo pipefail
cd "$(dirname "$0")/.."

tool() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then echo "docker-compose"
  fi
}

if [ -z "$(tool)" ]; then
  echo "compose: no Compose tool here: installing Debian's docker-compose" >&2
  apt-get update -qq
  # Without recommends: it would pull Debian's docker.io engine in beside the running one.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
  [ -n "$(tool)" ] || { echo "compose: docker-compose did not install" >&2; exit 1; }
fi
if [ "${1:-}" = "--install" ]; then tool; exit 0; fi

read -r -a compose <<<"$(tool)"
# Secrets are read at every command (down too): default to compose-up.sh's folder.
export HERDER_SECRETS_DIR=${HERDER_SECRETS_DIR:-$PWD/deploy/.secrets}
exec "${compose[@]}" -f deploy/compose.yml -p "${HERDER_STACK:-herder}" "$@"
