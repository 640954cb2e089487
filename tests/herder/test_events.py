"""One structured line per golem and daemon start and stop; the daemon proxy timed."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from daemons.models import Daemon
from golems.models import Golem
from golems.services import golem_kill, golem_reap_idle
from tests.accounts.conftest import alice, alice_token  # noqa: F401 (fixtures)
from tests.golems.conftest import webstrate_id
from tests.herder.asgi_client import http, scrape, value


def events(caplog, name: str) -> list[dict]:
    return [
        {**record.fields, "level": record.levelname}
        for record in caplog.records
        if getattr(record, "event", None) == name
    ]


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_golem_stops_are_one_line_each(docker_engine, settings, caplog):
    caplog.set_level(logging.INFO, logger="herder.events")
    Golem.objects.create(webstrate="obs-kill", state=Golem.State.RUNNING, container_id="k" * 12)
    Golem.objects.create(
        webstrate="obs-idle",
        state=Golem.State.RUNNING,
        container_id="i" * 12,
        last_active=timezone.now() - timedelta(hours=2),
    )
    settings.HERDER_GOLEM_IDLE_TIMEOUT = 3600

    golem_kill(webstrate="obs-kill")
    golem_reap_idle()

    stops = events(caplog, "golem.stop")
    assert {(line["webstrate"], line["state"]) for line in stops} == {("obs-kill", "killed"), ("obs-idle", "reaped")}
    assert [line["error"] for line in stops if line["state"] == "reaped"] == ["idle for 3600 s"]


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_golem_start_is_one_line(docker_engine, settings, caplog):
    from golems.services import golem_spawn

    settings.HERDER_GOLEM_CHECK_EXISTS = False
    caplog.set_level(logging.INFO, logger="herder.events")
    webstrate = webstrate_id("obs-start")
    try:
        golem = golem_spawn(webstrate=webstrate)
        golem_spawn(webstrate=webstrate)  # running already: nothing starts, nothing is told
    finally:
        golem_kill(webstrate=webstrate)

    assert events(caplog, "golem.start") == [
        {"webstrate": webstrate, "container": golem.container_name, "restarts": 0, "level": "INFO"}
    ]
    assert [line["state"] for line in events(caplog, "golem.stop")] == ["killed"]


@pytest.mark.django_db(transaction=True)
def test_daemon_starts_and_stops_are_told_once_committed(alice, caplog):  # noqa: F811 (the fixture)
    caplog.set_level(logging.INFO, logger="herder.events")
    daemon = Daemon.objects.create(
        owner=alice, name="web", full_name="web-jti", image="herder/daemon-echo:latest", volume="herder-test-obs"
    )
    with transaction.atomic():
        daemon.state, daemon.container_id = Daemon.State.RUNNING, "d" * 64
        daemon.save()
        assert events(caplog, "daemon.start") == []  # not before it commits
    assert events(caplog, "daemon.start") == [
        {"daemon": "web-jti", "image": "herder/daemon-echo:latest", "container": "d" * 12, "level": "INFO"}
    ]

    daemon.metered_until = timezone.now()
    daemon.save(update_fields=["metered_until"])  # metering says nothing
    daemon.state = Daemon.State.DEAD
    daemon.save(update_fields=["state"])

    assert len(events(caplog, "daemon.start")) == 1
    assert events(caplog, "daemon.stop") == [{"daemon": "web-jti", "state": "dead", "level": "WARNING"}]


@pytest.mark.django_db(transaction=True)
def test_the_daemon_proxy_is_timed_and_counted_by_route():
    before = scrape()
    answer = http("GET", "/daemon/v1/proxy/nobody-here/some/path")
    assert answer["status"] == 404
    assert answer["headers"]["x-request-id"]
    after = scrape()

    assert (
        value(after, "herder_proxy_request_duration_seconds_count")
        - value(before, "herder_proxy_request_duration_seconds_count")
        == 1
    )
    assert (
        value(after, "herder_http_requests_total", route="daemon-proxy", code="404")
        - value(before, "herder_http_requests_total", route="daemon-proxy", code="404")
        == 1
    )
