"""The OpenAPI schema is exact: generated without a warning, and Schemathesis, with
every check, finds nothing against a real herd.

The herd is `manage.py herd` on a free loopback port with its own data folder and
its own `herder.instance` label, on the real Docker engine: minion runs, daemons
(the echo image, a token in the Authorization header) and golems (at most one
Chromium: HERDER_GOLEM_MAX=1, no webstrates server asked). Whatever it started is
removed afterwards by that label (containers, networks) and by its database (the
daemons' volumes). Schemathesis runs as its CLI (tests/herder/schemathesis/: the
config, with the exceptions and why, and the hook that kills spawned daemons).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client

from herder.runtime import get_runtime
from herder.schema import DAEMON_NAME_OR_FULL_PATTERN, FILE_NAME_PATTERN, WEBSTRATE_ID_PATTERN
from tests.golems.conftest import Herder, herder_env, migrate

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "schemathesis"
ECHO = "herder/daemon-echo:latest"
# Schemathesis's own bound on top of its example counts: the run takes about a
# minute and a half on two shared cores; past this it has hung.
RUN_TIMEOUT = 600


def test_schema_generates_without_warnings():
    """drf-spectacular's warnings (two components of one name, a view whose
    serializer it guesses) make the schema wrong where clients read it."""
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    assert '"/minion/v1/spawn"' in out.getvalue()


def _schema() -> dict:
    out = StringIO()
    call_command("spectacular", "--format", "openapi-json", stdout=out)
    return json.loads(out.getvalue())


def test_schema_says_what_routes_take_and_answer():
    schema = _schema()
    paths = schema["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    # Every error in the one shape; every 429 says when to come back.
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (
                        method,
                        path,
                        status,
                    )
                if status == "429":
                    assert answer["headers"]["Retry-After"]["required"], (method, path)
    for path, name, pattern in (
        ("/golem/v1/spawn/{webstrate}", "webstrate", WEBSTRATE_ID_PATTERN),
        ("/daemon/v1/kill/{name}", "name", DAEMON_NAME_OR_FULL_PATTERN),
    ):
        parameters = {p["name"]: p for p in paths[path]["get"]["parameters"]}
        assert parameters[name]["in"] == "path" and parameters[name]["schema"]["pattern"] == pattern
    spawn = paths["/minion/v1/spawn"]["post"]
    form = spawn["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert spawn["requestBody"]["required"] and form["required"] == ["env"]
    assert form["properties"]["env"]["enum"] == ["latex", "node", "python", "ruby"]
    assert form["propertyNames"]["pattern"] == FILE_NAME_PATTERN
    # Daemon routes: a token by either scheme, never anonymous.
    assert paths["/daemon/v1/ls"]["get"]["security"] == [{"token": []}, {"tokenQuery": []}]
    assert {"/", "/golem/v1/", "/pressure"} <= set(paths)
    assert {socket["path"] for socket in schema["x-websockets"]} >= {
        "/golem/v1/connect/{webstrate}",
        "/minion/v1/connect/{webstrate}",
    }


@pytest.mark.parametrize("path", ["/", "/golem/v1/", "/pressure"])
def test_routes_taking_no_post_answer_405(path):
    """Found by Schemathesis's unsupported_method check: the bootstrap script
    answered any method, and a POST to either was a CSRF 403."""
    answer = Client(enforce_csrf_checks=True).post(path)
    assert answer.status_code == 405
    assert answer["Allow"] == "GET, HEAD"
    assert answer.json()["code"] == "method_not_allowed"


@pytest.fixture
def echo_image_current():
    """The daemon-echo image as this tree describes it (a no-op when it is)."""
    subprocess.run(["bash", "deploy/build-images.sh", "daemon-echo"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


@pytest.fixture
def herd(tmp_path, docker_engine, echo_image_current):
    instance = f"herder-test-schema-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    data.mkdir()
    env = herder_env(
        data,
        HERDER_INSTANCE=instance,
        HERDER_DAEMON_IMAGES=ECHO,
        HERDER_GOLEM_MAX="1",
        HERDER_GOLEM_CHECK_EXISTS="false",
        HERDER_TOKEN_PASSWORD=uuid.uuid4().hex,
        HERDER_MINION_POOL_SIZE="1",
        HERDER_DAEMON_MEMORY="64m",
        # Token generation's logic, not only its guessing throttle (which
        # tests/accounts/test_throttle.py covers), is what the run should reach.
        HERDER_TOKEN_GENERATE_RATE="1000/m",
    )
    migrate(env)
    minted = subprocess.run(
        [sys.executable, "manage.py", "mint_token", "-e", "schemathesis@example.org", "-c", "1000000"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    token = minted.stdout.strip().split()[-1]
    server = Herder(env=env, log=tmp_path / "herd.log", herd=True)
    server.database = data / "herder.sqlite3"
    try:
        yield server, token
    finally:
        server.stop()
        # The log less the one-line warnings of every refused request: errors stay.
        log = server.log.read_text(errors="replace").splitlines()
        print("--- herd log\n" + "\n".join(line for line in log if " WARNING django.request: " not in line)[-30000:])
        _remove_leftovers(instance, data / "herder.sqlite3")


def _remove_leftovers(instance: str, database: Path) -> None:
    """Everything the herd of `instance` left: containers and networks by label,
    the daemons' volumes by the names its database recorded."""
    from django.conf import settings as django_settings

    runtime = get_runtime()
    ours, django_settings.HERDER_INSTANCE = django_settings.HERDER_INSTANCE, instance
    try:
        for info in runtime.list(ours=True):
            runtime.remove(info.handle)
        for network in runtime.networks(ours=True):
            runtime.network_remove(network.name)
        if database.exists():
            with sqlite3.connect(database) as db:
                for (volume,) in db.execute("SELECT volume FROM daemons_daemon"):
                    runtime.remove_volume(volume)
        assert runtime.list(ours=True) == []
    finally:
        django_settings.HERDER_INSTANCE = ours


@pytest.mark.docker
def test_schemathesis_finds_nothing(herd, tmp_path):
    server, token = herd
    workdir = tmp_path / "schemathesis"
    workdir.mkdir()
    env = {
        **os.environ,
        "HERDER_SCHEMATHESIS_URL": server.http,
        "HERDER_SCHEMATHESIS_TOKEN": token,
        "HERDER_SCHEMATHESIS_HOOKS": str(HERE / "hooks.py"),
        "NO_COLOR": "1",
    }
    command = [
        str(ROOT / ".venv" / "bin" / "schemathesis"),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{server.http}/api/schema/",
        "--checks",
        "all",
        "-H",
        f"Authorization: Bearer {token}",
    ]
    try:
        # In a folder of its own: Schemathesis keeps its cache (.schemathesis/) there.
        run = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis ran past {RUN_TIMEOUT} s:\n{exc.stdout}")
    print(run.stdout[-20000:], run.stderr[-5000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
    # It did test every operation of the schema, and reached the routes' logic:
    # minions ran, a daemon was spawned (and killed by hooks.py).
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", run.stdout)
    assert selected and selected[1] == selected[2] and int(selected[1]) >= 17, run.stdout[:2000]
    assert re.search(rf"Tested: {selected[1]}\b", run.stdout)
    with sqlite3.connect(server.database) as db:
        assert db.execute("SELECT count(*) FROM minions_minionrun WHERE exit_code IS NOT NULL").fetchone()[0] > 0
        assert db.execute("SELECT count(*) FROM daemons_daemon WHERE state = 'killed'").fetchone()[0] > 0
