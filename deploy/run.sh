#!/usr/bin/env bash
# Set up, then run the whole herder in one process on the embedded defaults
# (SQLite, in-memory channel layer, local Docker). Arguments go to `herd`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/python manage.py herd "$@"
