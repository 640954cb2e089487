#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io if needed and
# start dockerd in the background when none is running. Idempotent.
set -euo pipefail

if ! command -v dockerd >/dev/null 2>&1; then
  echo "start-docker: installing docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if timeout 5 docker info >/dev/null 2>&1; then
  exit 0
fi

# A dockerd killed with -9 leaves its pid file behind and refuses to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi

echo "start-docker: starting dockerd (log: /var/log/herder-dockerd.log)"
nohup dockerd >/var/log/herder-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if timeout 5 docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "start-docker: dockerd did not answer within 30 s; see /var/log/herder-dockerd.log" >&2
exit 1
