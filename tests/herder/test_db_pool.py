"""PostgreSQL connections come from a pool per process (HERDER_DB_POOL): a
request's connection, closed at its end, serves the next request instead of a
new session each time; the supervisor lease's session stays outside the pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = os.environ.get("HERDER_TEST_POSTGRES_URL", "postgres://herder:herder@127.0.0.1:5432/postgres")

# Run in a process of its own: the test suite's Django is on SQLite.
PROBE = """
import json, threading
from django.db import connection, connections
from herder.lease import AdvisoryLease

def backend():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]

pids = []
def request():  # like a request: a thread of its own, its connection closed at its end
    pids.append(backend())
    connection.close()
for _ in range(6):
    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
pool = connections["default"].pool
before = pool.get_stats() if pool else {}
lease = AdvisoryLease()
held = lease.hold()
with lease._connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    lease_pid = cursor.fetchone()[0]
stats = pool.get_stats() if pool else {}
lease.release()
print(json.dumps({
    "pids": pids, "lease_pid": lease_pid, "held": held,
    "pooled": [before.get("connections_num", 0), stats.get("connections_num", 0)],
    "requests": [before.get("requests_num", 0), stats.get("requests_num", 0)],
}))
"""


@pytest.fixture
def database_url():
    name = f"herder_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def probe(database_url: str, tmp_path, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
    environment.update(DATABASE_URL=database_url, HERDER_DATA_DIR=str(tmp_path), **env)
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PROBE],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_requests_share_pooled_sessions_and_the_lease_has_its_own(database_url, tmp_path):
    seen = probe(database_url, tmp_path)
    # The pool opens one session and may add a second while the first request waits.
    assert len(set(seen["pids"])) <= 2, "each request opened a session of its own"
    assert seen["held"]
    assert seen["lease_pid"] not in seen["pids"]
    before, after = seen["pooled"]
    assert before == after, "the lease's session came from the pool"
    assert seen["requests"][0] == seen["requests"][1] == 6


def test_without_the_pool_each_request_opens_a_session(database_url, tmp_path):
    seen = probe(database_url, tmp_path, HERDER_DB_POOL="false")
    assert len(set(seen["pids"])) == 6
    assert seen["held"]
