#!/usr/bin/env bash
# Make the deployment's secret files once (mode 0600) in HERDER_SECRETS_DIR
# (default deploy/.secrets): the PostgreSQL password, Django's secret key, the
# token signing key pair and the token password. Existing files are kept.
set -euo pipefail
dir=${HERDER_SECRETS_DIR:-$(cd "$(dirname "$0")" && pwd)/.secrets}
mkdir -p "$dir" && chmod 700 "$dir"
umask 077
# No trailing newline: *_FILE settings take a file's bytes as they are.
make() { [ -s "$dir/$1" ] || openssl rand -hex 32 | tr -d '\n' > "$dir/$1"; }
make postgres_password
make secret_key
make token_password
if [ ! -s "$dir/token_private_key" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$dir/token_private_key" 2>/dev/null
  rm -f "$dir/token_public_key"
fi
[ -s "$dir/token_public_key" ] || openssl pkey -in "$dir/token_private_key" -pubout -out "$dir/token_public_key"
echo "$dir"
