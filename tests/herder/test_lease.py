"""The supervisor lease: one holder at a time, passed on when the holder goes."""

from __future__ import annotations

import os
import time
import uuid

import psycopg
import pytest

from herder.lease import AdvisoryLease, FileLease
from herder.supervisor import Supervisor

POSTGRES = os.environ.get("HERDER_TEST_POSTGRES_URL", "postgres://herder:herder@127.0.0.1:5432/postgres")


def test_a_file_lease_has_one_holder_and_passes_on_release(tmp_path):
    first, second = FileLease(tmp_path / "lock"), FileLease(tmp_path / "lock")
    assert first.hold() and first.hold()
    assert not second.hold()
    first.release()
    assert second.hold() and not first.hold()
    second.release()


@pytest.fixture
def database():
    name = f"herder_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    yield lambda: psycopg.connect(url, autocommit=True)
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_advisory_lease_passes_when_its_session_ends(database):
    first, second = AdvisoryLease(connect=database), AdvisoryLease(connect=database)
    assert first.hold() and first.hold()
    assert not second.hold()
    # The holder's session dies (its process killed): the server frees the lock.
    with database() as admin:
        # Only this test's database: other runs may share the server.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    # pg_terminate_backend only signals the backend: it frees the lock as it exits.
    deadline = time.monotonic() + 10
    while not second.hold() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.hold()
    assert not first.hold(), "a lease whose session died is not held"
    second.release()
    assert first.hold()
    first.release()


@pytest.mark.django_db  # the supervisor closes stale connections after each duty
def test_only_the_holder_runs_the_deployments_duties(tmp_path):
    calls = []
    holder = Supervisor(
        interval=1,
        duties=[lambda: calls.append("a: shared")],
        local_duties=[lambda: calls.append("a: local")],
        lease=FileLease(tmp_path / "lock"),
    )
    other = Supervisor(
        interval=1,
        duties=[lambda: calls.append("b: shared")],
        local_duties=[lambda: calls.append("b: local")],
        lease=FileLease(tmp_path / "lock"),
    )
    holder.run_once()
    other.run_once()
    assert calls == ["a: local", "a: shared", "b: local"]
    holder.stop()  # hands the lease on
    calls.clear()
    other.run_once()
    assert calls == ["b: local", "b: shared"]
    other.stop()
