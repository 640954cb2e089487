#!/usr/bin/env bash
# Set up the herder on this machine: Python packages in .venv, a running Docker
# engine, the images, the database. Idempotent: quick when all is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  if ! python3 -m venv .venv 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
    rm -rf .venv
    python3 -m venv .venv
  fi
fi
# Reinstall only when requirements.txt changed.
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt >.venv/pip.log 2>&1 \
    || { tail -n 30 .venv/pip.log; exit 1; }
  echo "$want" >"$stamp"
fi

bash deploy/start-docker.sh
bash deploy/build-images.sh
.venv/bin/python manage.py migrate --no-input -v 0
say "ready"
