#!/usr/bin/env bash
# Build herder/herder:latest (deploy/Dockerfile) from this repository. pip gets
# no network inside the build: the runtime wheels are downloaded here on the
# host first (deploy/.wheels), then installed with --no-index. Skipped when the
# image's herder.build-hash (its inputs' digest) is current.
#
#   bash deploy/build-herder-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tag=herder/herder:latest
log_dir=${HERDER_BUILD_LOG_DIR:-/tmp/herder-build}
mkdir -p "$log_dir" deploy/.wheels
say() { printf 'build-herder-image: %s\n' "$*"; }

bash deploy/build-images.sh postgres redis >/dev/null || bash deploy/build-images.sh postgres redis
# The runtime part of requirements.txt (tests and browsers stay out of the image).
sed '/^# Tests/,$d' requirements.txt > deploy/.wheels/requirements.txt
# ... plus websockets, listed with the tests but imported by the daemon proxy.
grep -E '^websockets==' requirements.txt >> deploy/.wheels/requirements.txt
hash=$( (find deploy/.wheels/requirements.txt deploy/build-herder-image.sh manage.py herder accounts minions golems daemons deploy/Dockerfile \
           deploy/herder deploy/seccomp -type f ! -name "*.pyc" -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{ index .Config.Labels "herder.build-hash" }}' "$tag" 2>/dev/null || true)
if [ "$current" = "$hash" ]; then say "$tag is up to date ($hash)"; exit 0; fi

pip=${PIP:-.venv/bin/pip}
say "downloading wheels into deploy/.wheels"
# Offline first: the wheels of an earlier build may be all that is needed.
if "$pip" download -q --disable-pip-version-check --no-index --find-links deploy/.wheels -d deploy/.wheels \
     -r deploy/.wheels/requirements.txt "async-timeout>=4.0.3" >"$log_dir/herder-wheels.log" 2>&1; then
  say "the wheels are all in deploy/.wheels already"
else
"$pip" download -q --disable-pip-version-check -d deploy/.wheels -r deploy/.wheels/requirements.txt \
  >"$log_dir/herder-wheels.log" 2>&1 || { tail -n 20 "$log_dir/herder-wheels.log"; exit 1; }
# Debian's python3 is 3.11.2; redis needs async-timeout below 3.11.3, which a
# newer host Python does not download for itself.
"$pip" download -q --disable-pip-version-check -d deploy/.wheels "async-timeout>=4.0.3" \
  >>"$log_dir/herder-wheels.log" 2>&1 || { tail -n 20 "$log_dir/herder-wheels.log"; exit 1; }
fi
say "building $tag ($hash), log: $log_dir/herder.log"
started=$SECONDS
DOCKER_BUILDKIT=0 docker build --network host --label "herder.build-hash=$hash" -t "$tag" \
  -f deploy/Dockerfile . >"$log_dir/herder.log" 2>&1 || { tail -n 30 "$log_dir/herder.log"; exit 1; }
say "built $tag in $((SECONDS - started)) s"
