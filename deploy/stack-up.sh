#!/usr/bin/env bash
# Deploy the herder on Docker Swarm (deploy/stack.yml) from this repository:
#
#   bash deploy/stack-up.sh            # then http://127.0.0.1:${HERDER_PORT:-8000}/
#
# Needs a swarm (`docker swarm init`; HERDER_SWARM_INIT=1 makes a single-node
# one on 127.0.0.1). Builds the images it needs, makes the secrets
# (deploy/secrets.sh), deploys the stack HERDER_STACK (default "herder") and
# waits until the front answers. Images are local: on several nodes, push them
# to a registry and set HERDER_IMAGE, or build them on every node.
# `docker stack rm herder` stops it (the pgdata volume stays).
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${HERDER_STACK:-herder}
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
  if [ "${HERDER_SWARM_INIT:-0}" = "1" ]; then
    docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
  else
    echo "stack-up: this engine is in no swarm: run 'docker swarm init' (or set HERDER_SWARM_INIT=1)" >&2
    exit 1
  fi
fi
bash deploy/build-images.sh daemon-echo golem minion-python minion-node minion-ruby minion-latex
bash deploy/build-herder-image.sh
HERDER_SECRETS_DIR=$(bash deploy/secrets.sh)
export HERDER_SECRETS_DIR HERDER_INSTANCE=${HERDER_INSTANCE:-$stack}
docker stack deploy --prune -c deploy/stack.yml "$stack"
port=${HERDER_PORT:-8000}
for _ in $(seq 1 120); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/golem/v1/ls', timeout=3)" 2>/dev/null; then
    echo "stack-up: the herder answers on http://127.0.0.1:$port/ (token password: $HERDER_SECRETS_DIR/token_password)"
    exit 0
  fi
  sleep 2
done
echo "stack-up: no answer on port $port after 4 minutes; see 'docker service ps ${stack}_herder'" >&2
exit 1
