"""Fixtures shared by every app's tests.

Docker tests run against the real engine and the herder's images (built by
deploy/build-images.sh); they fail, not skip, when the engine is missing.
Deselect them on purpose with `-m "not docker"`.
"""

import time
import uuid

import pytest
from django.conf import settings as django_settings

from herder.errors import RuntimeUnavailable
from herder.runtime import get_runtime


def herder_containers(kind: str) -> list:
    """This test run's containers of `kind` (other runs may share the engine)."""
    return get_runtime().list(kind=kind, ours=True)


def wait_until_gone(kind: str, *, seconds: float = 10.0) -> list:
    """The herder's containers of `kind` still there after waiting for auto-removal."""
    deadline = time.monotonic() + seconds
    while True:
        left = herder_containers(kind)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def remove_leftovers(infos: list) -> list[str]:
    """Print the end of each leftover container's logs (why it outlived its
    test), remove it, and return the names: a Docker test's leak check."""
    for info in infos:
        print(f"--- logs of {info.handle.name}")
        try:
            print(b"".join(get_runtime().logs(info.handle)).decode(errors="replace")[-3000:])
        except Exception as exc:  # the logs are a courtesy
            print(f"(no logs: {exc})")
        get_runtime().remove(info.handle)
    return [info.handle.name for info in infos]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory) -> None:
    """SQLite tests use a file, as the herder does: Django's default in-memory test
    database, shared between threads, locks differently (a writer makes the
    others fail at once instead of waiting for SQLite's busy timeout)."""
    database = django_settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test.sqlite3")


@pytest.fixture(scope="session", autouse=True)
def _instance_of_this_run():
    """Containers of this run carry their own `herder.instance` label, so two
    test runs on one engine never count or remove each other's."""
    django_settings.HERDER_INSTANCE = f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def docker_engine():
    try:
        get_runtime().list()
    except RuntimeUnavailable:
        pytest.fail("The Docker engine does not answer: run deploy/start-docker.sh (or deselect with -m 'not docker').")
    return get_runtime()


@pytest.fixture(autouse=True)
def _rates_start_afresh():
    """Rates are counted in the cache, which outlives a test: each starts at zero."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _cold_minions_unless_asked(settings):
    """Runs go cold unless a test turns the warm pool on; it is emptied after."""
    from minions.services import pool

    settings.HERDER_MINION_POOL_SIZE = 0
    yield
    pool.close()


@pytest.fixture(autouse=True)
def _docker_tests_leave_no_minion(request):
    """Every Docker test must leave no minion container behind."""
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    request.getfixturevalue("docker_engine")
    yield
    from minions.services import pool

    pool.close()  # idle warm containers are kept on purpose until then
    left = remove_leftovers(wait_until_gone("minion"))
    assert not left, f"minion containers left behind: {left}"
