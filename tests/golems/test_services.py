"""Golem lifecycle on the real engine: spawn, reset, kill, ls, crash restart,
adoption after a restart, idle reaping; the HTTP routes and the admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from golems.models import Golem
from golems.services import (
    LABEL_INSTANCE,
    golem_container_spec,
    golem_kill,
    golem_proof,
    golem_reap_idle,
    golem_reconcile,
    golem_reset,
    golem_spawn,
    restart_delay,
)
from herder.errors import BadWebstrateId, GolemNotFound
from herder.runtime import Handle
from tests.golems.conftest import webstrate_id

W_ADMIN = webstrate_id("admin")
W_ADOPT = webstrate_id("adopt")
W_FOREIGN = webstrate_id("foreign")
W_BUSY = webstrate_id("busy")
W_CRASH = webstrate_id("crash")
W_HTTP = webstrate_id("http")
W_IDLE = webstrate_id("idle")
W_ONE = webstrate_id("one")
W_RESET = webstrate_id("reset")
W_SPEC = webstrate_id("spec")

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _nowhere_to_go(settings):
    # The golems of these tests need no page: Chromium keeps running on its error page.
    settings.HERDER_GOLEM_WEBSTRATES_URL = "http://127.0.0.1:9"
    settings.HERDER_GOLEM_CHECK_EXISTS = False  # tests/golems/test_admission.py checks it


def live(engine, webstrate: str) -> list[str]:
    return [c.handle.id for c in engine.list(kind="golem", owner=webstrate) if c.status == "running"]


def test_spawn_is_one_golem_per_webstrate_and_kill_removes_it(docker_engine):
    first = golem_spawn(webstrate=W_ONE)
    again = golem_spawn(webstrate=W_ONE)
    assert first.container_id == again.container_id
    assert live(docker_engine, W_ONE) == [first.container_id]
    assert Golem.objects.get(webstrate=W_ONE).state == Golem.State.RUNNING

    killed = golem_kill(webstrate=W_ONE)
    assert killed.state == Golem.State.KILLED
    assert docker_engine.list(kind="golem", owner=W_ONE) == []
    with pytest.raises(GolemNotFound):
        golem_kill(webstrate=W_ONE)
    with pytest.raises(GolemNotFound):
        golem_reset(webstrate=W_ONE)


def test_reset_starts_a_fresh_container(docker_engine):
    before = golem_spawn(webstrate=W_RESET).container_id
    after = golem_reset(webstrate=W_RESET).container_id
    assert after != before
    assert live(docker_engine, W_RESET) == [after]
    golem_kill(webstrate=W_RESET)


def test_bad_webstrate_id_is_refused_before_docker(docker_engine):
    for bad in ("", "-x", "a/b", "a" * 129, "ä"):
        with pytest.raises(BadWebstrateId):
            golem_spawn(webstrate=bad)
    assert not Golem.objects.exists()


def test_golem_container_is_confined_and_resolves_only_allowed_hosts(settings):
    settings.HERDER_PUBLIC_URL = "https://herder.example"
    settings.HERDER_GOLEM_WEBSTRATES_URL = "https://webstrates.example"
    settings.HERDER_GOLEM_NETWORK = ""
    settings.HERDER_GOLEM_ALLOWED_HOSTS = ["fonts.example", "api.example:8443"]
    spec = golem_container_spec(W_SPEC, "generation-1")
    assert spec.command[-1] == f"https://webstrates.example/{W_SPEC}/"
    assert spec.command[0] == (
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE webstrates.example, "
        "EXCLUDE herder.example, EXCLUDE fonts.example, EXCLUDE api.example, "
        "EXCLUDE 127.0.0.1"
    )
    assert "--no-sandbox" not in spec.command and spec.security_opt[0].startswith("seccomp={")
    # Its own isolated bridge (created at start), reaching the host as host.docker.internal.
    assert spec.network == "herder-golems" and spec.extra_hosts == {"host.docker.internal": "host-gateway"}
    # Chromium's proxy connects to these pairs only.
    assert spec.environment["HERDER_GOLEM_ALLOW"] == (
        "webstrates.example:443,herder.example:443,fonts.example:80,fonts.example:443,api.example:8443"
    )
    # The proof of this generation, for the control socket's URL; the generation on a label.
    assert spec.environment["HERDER_GOLEM_PROOF"] == golem_proof(W_SPEC, "generation-1")
    assert spec.environment["HERDER_GOLEM_PROOF_URL"] == f"wss://herder.example/golem/v1/connect/{W_SPEC}"
    assert spec.labels == {"herder.generation": "generation-1"}
    assert golem_proof(W_SPEC, "generation-2") != golem_proof(W_SPEC, "generation-1")
    assert spec.confined and spec.read_only and spec.pids == 512 and not spec.ports
    assert not any("remote-debugging" in arg for arg in spec.command)

    settings.HERDER_GOLEM_SANDBOX = False
    settings.HERDER_PUBLIC_URL = "http://127.0.0.1:8000"
    settings.HERDER_GOLEM_WEBSTRATES_URL = "http://localhost:7007"
    spec = golem_container_spec(W_SPEC)
    assert "--no-sandbox" in spec.command and spec.security_opt == []
    assert spec.network == "host" and spec.extra_hosts == {}


def test_a_crashed_golem_is_restarted(docker_engine):
    golem = golem_spawn(webstrate=W_CRASH)
    docker_engine.stop(Handle(id=golem.container_id, name=golem.container_name), now=True)
    golem_reconcile()
    golem.refresh_from_db()
    assert golem.state == Golem.State.RUNNING and golem.restarts == 1
    assert golem.error == "its container exited"
    assert live(docker_engine, W_CRASH) == [golem.container_id]

    # A container removed behind the herder's back counts as a crash too. Crashing
    # again right after its start, it waits before the next restart.
    docker_engine.remove(Handle(id=golem.container_id, name=golem.container_name))
    golem_reconcile()
    golem.refresh_from_db()
    assert golem.state == Golem.State.CRASHED and golem.error == "its container vanished"
    assert (golem.restarts, golem.crash_streak) == (2, 2) and live(docker_engine, W_CRASH) == []
    assert restart_delay(2) == 5 and restart_delay(3) == 10 and restart_delay(30) == 300
    Golem.objects.filter(pk=golem.pk).update(stopped=timezone.now() - timedelta(seconds=6))
    golem_reconcile()
    golem.refresh_from_db()
    assert golem.state == Golem.State.RUNNING and live(docker_engine, W_CRASH) == [golem.container_id]
    # A reset starts afresh.
    assert golem_reset(webstrate=W_CRASH).crash_streak == 0
    golem_kill(webstrate=W_CRASH)


def test_running_golems_are_adopted_after_a_restart(docker_engine):
    spawned = golem_spawn(webstrate=W_ADOPT)
    container_id = spawned.container_id
    Golem.objects.all().delete()  # a herder that lost its rows (or a fresh database)
    golem_reconcile()
    adopted = Golem.objects.get(webstrate=W_ADOPT)
    assert adopted.state == Golem.State.RUNNING and adopted.container_id == container_id
    # Its generation comes back from the container's label: the golem can still prove itself.
    assert adopted.generation == spawned.generation and len(adopted.generation) == 32
    assert adopted.restarts == 0
    golem_kill(webstrate=W_ADOPT)


def test_golems_of_another_herder_on_the_engine_are_left_alone(docker_engine):
    spec = golem_container_spec(W_FOREIGN)
    spec.labels = {LABEL_INSTANCE: "another-herder"}
    handle = docker_engine.start(spec)
    try:
        golem_reconcile()
        assert not Golem.objects.filter(webstrate=W_FOREIGN).exists()
        assert live(docker_engine, W_FOREIGN) == [handle.id]
    finally:
        docker_engine.remove(handle)


def test_idle_golems_are_reaped(docker_engine, settings):
    settings.HERDER_GOLEM_IDLE_TIMEOUT = 60
    golem_spawn(webstrate=W_IDLE)
    golem_spawn(webstrate=W_BUSY)
    Golem.objects.filter(webstrate=W_IDLE).update(last_active=timezone.now() - timedelta(seconds=61))
    golem_reap_idle()
    assert Golem.objects.get(webstrate=W_IDLE).state == Golem.State.REAPED
    assert docker_engine.list(kind="golem", owner=W_IDLE) == []
    assert Golem.objects.get(webstrate=W_BUSY).state == Golem.State.RUNNING

    settings.HERDER_GOLEM_IDLE_TIMEOUT = 0  # never
    Golem.objects.filter(webstrate=W_BUSY).update(last_active=timezone.now() - timedelta(days=30))
    golem_reap_idle()
    assert Golem.objects.get(webstrate=W_BUSY).state == Golem.State.RUNNING
    golem_kill(webstrate=W_BUSY)


def test_routes_answer_text_unless_json_is_accepted(docker_engine):
    client = APIClient()
    spawned = client.get(f"/golem/v1/spawn/{W_HTTP}")
    assert spawned.status_code == 200 and spawned["Content-Type"].startswith("text/plain")
    container_id = spawned.content.decode().strip()
    assert live(docker_engine, W_HTTP) == [container_id]

    as_json = client.post(f"/golem/v1/spawn/{W_HTTP}", HTTP_ACCEPT="application/json")
    assert as_json.status_code == 200
    assert as_json.json()["container_id"] == container_id and as_json.json()["state"] == "running"

    listed = client.get("/golem/v1/ls")
    assert listed["Content-Type"] == "application/json"
    assert [g["webstrate"] for g in listed.json()] == [W_HTTP]

    reset = client.get(f"/golem/v1/reset/{W_HTTP}")
    assert reset.status_code == 200 and reset.content.decode().strip() != container_id

    killed = client.get(f"/golem/v1/kill/{W_HTTP}")
    assert (killed.status_code, killed.content.decode().strip()) == (200, "ok")
    assert client.get("/golem/v1/ls").json() == []

    # Errors are JSON whatever the client accepts.
    missing = client.get(f"/golem/v1/kill/{W_HTTP}")
    assert missing.status_code == 404 and missing.json()["code"] == "golem_not_found"
    bad = client.get("/golem/v1/spawn/-bad", HTTP_ACCEPT="text/plain")
    assert bad.status_code == 400 and bad.json()["code"] == "bad_webstrate_id"
    assert docker_engine.list(kind="golem", owner=W_HTTP) == []


def test_admin_lists_golems_and_resets_and_kills_them(docker_engine):
    User.objects.create_superuser("operator", "op@herder.test", "pw")
    client = Client()
    client.login(username="operator", password="pw")
    golem = golem_spawn(webstrate=W_ADMIN)

    # Staff who may only look cannot reset or kill.
    viewer = User.objects.create_user("viewer", "viewer@herder.test", "pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_golem"))
    looking = Client()
    looking.login(username="viewer", password="pw")
    assert looking.get("/admin/golems/golem/").status_code == 200
    looking.post("/admin/golems/golem/", {"action": "kill_golems", "_selected_action": [golem.pk]})
    assert live(docker_engine, W_ADMIN) == [golem.container_id]

    page = client.get("/admin/golems/golem/", {"q": W_ADMIN})
    assert page.status_code == 200 and W_ADMIN.encode() in page.content
    client.post("/admin/golems/golem/", {"action": "reset_golems", "_selected_action": [golem.pk]})
    golem.refresh_from_db()
    assert live(docker_engine, W_ADMIN) == [golem.container_id]

    client.post("/admin/golems/golem/", {"action": "kill_golems", "_selected_action": [golem.pk]})
    golem.refresh_from_db()
    assert golem.state == Golem.State.KILLED
    assert docker_engine.list(kind="golem", owner=W_ADMIN) == []
