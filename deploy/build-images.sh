#!/usr/bin/env bash
# Build the herder's images from deploy/images/. An image is rebuilt only when
# its inputs changed: each carries the label herder.build-hash, a hash of its
# Dockerfile, its own folder and deploy/images/common/.
#
# Where debian:bookworm-slim is missing and cannot be pulled (no registry),
# it is made with debootstrap from Debian's package mirror.
#
#   deploy/build-images.sh                  # every image
#   deploy/build-images.sh minion-python    # just these
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
images_dir="$here/images"
base=debian:bookworm-slim
log_dir=${HERDER_BUILD_LOG_DIR:-/tmp/herder-build}
mkdir -p "$log_dir"

say() { printf 'build-images: %s\n' "$*"; }

ensure_base() {
  if docker image inspect "$base" >/dev/null 2>&1; then return; fi
  say "$base is missing; trying to pull it"
  if timeout 60 docker pull "$base" >/dev/null 2>&1; then return; fi
  say "no registry reachable: making $base with debootstrap (about 30 s)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local root mirror
  root=$(mktemp -d)
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" \
    >"$log_dir/debootstrap.log" 2>&1 || { tail -n 20 "$log_dir/debootstrap.log"; exit 1; }
  # Trim what an image never needs; apt lists are fetched again by each build.
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import - "$base" >/dev/null
  rm -rf "$root"
}

build_hash() {
  local name=$1
  (cd "$images_dir" && find "$name" common -type f 2>/dev/null | LC_ALL=C sort | xargs sha256sum) \
    | sha256sum | cut -c1-16
}

progress() {
  # While a build runs, say its step ("Step 3/9 : RUN apt-get ...") whenever a
  # new one starts, and at least every 10 s how long it has been running, so a
  # minute of apt is not a minute of silence.
  local name=$1 log=$2 pid=$3 started=$4 last="" said=$SECONDS step
  while kill -0 "$pid" 2>/dev/null; do
    step=$(grep -E '^Step [0-9]+/[0-9]+ : ' "$log" 2>/dev/null | tail -n1 | cut -c1-90 || true)
    if [ -n "$step" ] && { [ "$step" != "$last" ] || [ $((SECONDS - said)) -ge 10 ]; }; then
      say "$name: $step ($((SECONDS - started)) s)"
      last=$step said=$SECONDS
    fi
    sleep 1
  done
}

image_name() {
  # minion-python -> herder/minion-python:latest
  printf 'herder/%s:latest' "$1"
}

build_one() {
  local name=$1 tag hash current
  tag=$(image_name "$name")
  hash=$(build_hash "$name")
  current=$(docker image inspect -f '{{ index .Config.Labels "herder.build-hash" }}' "$tag" 2>/dev/null || true)
  if [ "$current" = "$hash" ]; then
    say "$tag is up to date ($hash)"
    return 0
  fi
  say "building $tag ($hash), log: $log_dir/$name.log"
  local started=$SECONDS status=0
  DOCKER_BUILDKIT=0 docker build --network host --label "herder.build-hash=$hash" \
    -t "$tag" -f "$images_dir/$name/Dockerfile" "$images_dir" >"$log_dir/$name.log" 2>&1 &
  local build=$!
  progress "$name" "$log_dir/$name.log" "$build" "$started"
  wait "$build" || status=$?
  if [ "$status" -eq 0 ]; then
    say "built $tag in $((SECONDS - started)) s"
  else
    say "FAILED $tag; last lines of its log:"
    tail -n 30 "$log_dir/$name.log"
    return 1
  fi
}

main() {
  local names=("$@")
  if [ ${#names[@]} -eq 0 ]; then
    for d in "$images_dir"/*/; do
      d=$(basename "$d")
      [ -f "$images_dir/$d/Dockerfile" ] && names+=("$d")
    done
  fi
  ensure_base
  # Two at a time: the machines have two cores and the builds are mostly apt.
  local pids=() failed=0 name
  for name in "${names[@]}"; do
    build_one "$name" &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return $failed
}

main "$@"
