"""GET /metrics: the families move by the right amounts after real events, and
only those allowed may scrape. Counters are process-wide: tests compare a
scrape before with one after."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.utils import timezone

from golems.models import Golem
from golems.services import golem_control_admit, golem_proof
from herder import admission
from herder.asgi import application
from herder.runtime import get_runtime
from tests.herder.asgi_client import ahttp, http, samples, scrape, value

ROOT = Path(__file__).resolve().parents[2]


def spawn_minion(fields: dict) -> dict:
    body = encode_multipart(BOUNDARY, fields)
    answer = http("POST", "/minion/v1/spawn", body=body, headers={"content-type": MULTIPART_CONTENT})
    assert answer["status"] == 200, answer
    return json.loads(answer["body"])


# --- Minion runs against the real engine --------------------------------------------


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_minion_runs_move_runs_and_durations_by_env_and_outcome(docker_engine, settings, caplog):
    settings.HERDER_MINION_MEMORY = "128m"
    before = scrape()
    caplog.set_level(logging.INFO, logger="herder.events")

    assert spawn_minion({"env": "python", "main.py": "print('hi')"})["ExitCode"] == 0
    assert spawn_minion({"env": "python", "main.py": "print('hi again')"})["ExitCode"] == 0
    grow = "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 * 1024 * 1024))\n"
    assert spawn_minion({"env": "python", "main.py": grow})["ExitCode"] == 137
    settings.HERDER_MINION_TIMEOUT = 2
    assert spawn_minion({"env": "python", "main.py": "import time\ntime.sleep(60)"})["TimedOut"] is True

    after = scrape()
    for outcome, runs in (("ok", 2), ("oom", 1), ("timeout", 1), ("error", 0)):
        labels = {"env": "python", "outcome": outcome}
        assert (
            value(after, "herder_minion_runs_total", **labels) - value(before, "herder_minion_runs_total", **labels)
            == runs
        ), outcome
        assert (
            value(after, "herder_minion_run_duration_seconds_count", **labels)
            - value(before, "herder_minion_run_duration_seconds_count", **labels)
            == runs
        ), outcome
    timeout = {"env": "python", "outcome": "timeout"}
    timed_out_for = value(after, "herder_minion_run_duration_seconds_sum", **timeout) - value(
        before, "herder_minion_run_duration_seconds_sum", **timeout
    )
    assert round(timed_out_for, 6) >= 2  # the sums are floats: 8.005 - 6.005 < 2
    # Nothing else moved: other envs stay where they were (and exist at 0 before any run).
    assert ("herder_minion_runs_total", ("env", "ruby"), ("outcome", "ok")) in before
    assert value(after, "herder_minion_runs_total", env="ruby", outcome="ok") == value(
        before, "herder_minion_runs_total", env="ruby", outcome="ok"
    )
    # Two minion spawns answered 200 by their route's name.
    assert (
        value(after, "herder_http_requests_total", route="minion-spawn", code="200")
        - value(before, "herder_http_requests_total", route="minion-spawn", code="200")
        == 4
    )
    # One structured line per run.
    lines = [r for r in caplog.records if getattr(r, "event", None) == "minion.run"]
    assert [r.fields["outcome"] for r in lines] == ["ok", "ok", "oom", "timeout"]


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_warm_containers_are_a_gauge_by_env(docker_engine, settings):
    from minions.services import pool

    settings.HERDER_MINION_POOL_SIZE = 1
    spawn_minion({"env": "python", "main.py": "print(1)"})
    # The pool refills in the background; the scrape reads this process's pool.
    deadline = timezone.now() + timedelta(seconds=30)
    while pool.idle("python") < 1 and timezone.now() < deadline:
        time.sleep(0.1)
    assert value(scrape(), "herder_minion_pool_idle", env="python") == pool.idle("python") >= 1
    pool.close()
    assert value(scrape(), "herder_minion_pool_idle", env="python") == 0
    # A closed pool reopens only once its filler thread has ended: let the next test find it so.
    if pool._thread is not None:
        pool._thread.join(timeout=15)


# --- Golem pairing: sockets by kind and relayed frames ------------------------------------


@pytest.fixture
def fresh_channel_layer():
    """An in-memory layer of the test's own (its queues belong to one event loop)."""
    from channels.layers import channel_layers

    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


async def _connect(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect(timeout=5)
    assert connected, path
    return communicator


async def _ascrape() -> dict:
    answer = await ahttp("GET", "/metrics")
    assert answer["status"] == 200
    return samples(answer["body"].decode())


@pytest.mark.django_db(transaction=True)
def test_pairing_counts_sockets_by_kind_and_relayed_frames(fresh_channel_layer):
    kinds = ("golem_control", "minion", "golem_minion")

    async def scenario():
        before = await _ascrape()
        control = await _connect("/golem/v1/connect/obs-pair")
        minion = await _connect("/minion/v1/connect/obs-pair?type=python")
        announced = json.loads(await control.receive_from(5))
        golem = await _connect(f"/golem/v1/connect-to/obs-pair/{announced['ID']}")
        assert json.loads(await minion.receive_from(5)) == {"Event": "golem-connected"}

        for i in range(3):
            await minion.send_to(text_data=f"to golem {i}")
            assert await golem.receive_from(5) == f"to golem {i}"
        for i in range(2):
            await golem.send_to(bytes_data=bytes([i]) * 10)
            assert await minion.receive_from(5) == bytes([i]) * 10
        during = await _ascrape()

        for communicator in (golem, minion, control):
            await communicator.disconnect()
        after = await _ascrape()
        return before, during, after

    before, during, after = async_to_sync(scenario)()
    for kind in kinds:
        assert value(during, "herder_websockets", kind=kind) - value(before, "herder_websockets", kind=kind) == 1
        assert value(after, "herder_websockets", kind=kind) == value(before, "herder_websockets", kind=kind)
    assert value(during, "herder_relay_messages_total") - value(before, "herder_relay_messages_total") == 5


# --- Refusals, golems, daemons, credits --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refused_golem_spawn_is_counted_by_reason_and_route(settings):
    settings.HERDER_GOLEM_MAX = 1
    settings.HERDER_GOLEM_CHECK_EXISTS = False
    Golem.objects.create(webstrate="obs-full", state=Golem.State.RUNNING, container_id="x" * 12)
    before = scrape()

    answer = http("GET", "/golem/v1/spawn/obs-other")
    assert answer["status"] == 429, answer

    after = scrape()
    assert (
        value(after, "herder_refused_total", reason="golem_total")
        - value(before, "herder_refused_total", reason="golem_total")
        == 1
    )
    assert (
        value(after, "herder_http_requests_total", route="golem-spawn", code="429")
        - value(before, "herder_http_requests_total", route="golem-spawn", code="429")
        == 1
    )
    # Database gauges at scrape time: every state present, the row counted.
    assert value(after, "herder_golems", state="running") == 1
    assert value(after, "herder_golems", state="crashed") == 0
    assert ("herder_golems", ("state", "starting")) in after
    assert ("herder_daemons", ("state", "running")) in after
    assert not Golem.objects.filter(webstrate="obs-other").exists()


@pytest.mark.django_db
def test_refused_minions_count_as_refused_runs_and_series_exist_up_front():
    before = scrape()
    for reason in ("golem_total", "golem-spawn", "websocket_per_client", "minion_total"):
        assert ("herder_refused_total", ("reason", reason)) in before
    assert ("herder_minion_runs_total", ("env", "unknown"), ("outcome", "refused")) in before

    admission.refuse("minion_total", "The herder is at its limit.")

    after = scrape()
    assert (
        value(after, "herder_refused_total", reason="minion_total")
        - value(before, "herder_refused_total", reason="minion_total")
        == 1
    )
    assert (
        value(after, "herder_minion_runs_total", env="unknown", outcome="refused")
        - value(before, "herder_minion_runs_total", env="unknown", outcome="refused")
        == 1
    )


@pytest.mark.django_db
def test_a_golem_is_ready_when_its_chromium_connects_with_its_proof_timed_once():
    started = timezone.now() - timedelta(seconds=3)
    golem = Golem.objects.create(
        webstrate="obs-ready", state=Golem.State.RUNNING, container_id="c" * 12, generation="g" * 32, started=started
    )
    before = scrape()

    assert golem_control_admit(webstrate=golem.webstrate, proof=golem_proof(golem.webstrate, golem.generation))
    golem_control_admit(webstrate=golem.webstrate, proof=golem_proof(golem.webstrate, golem.generation))

    after = scrape()
    assert value(after, "herder_golem_ready_seconds_count") - value(before, "herder_golem_ready_seconds_count") == 1
    waited = value(after, "herder_golem_ready_seconds_sum") - value(before, "herder_golem_ready_seconds_sum")
    assert 3 <= waited < 60


@pytest.mark.django_db(transaction=True)
def test_credits_spent_count_once_committed():
    from accounts.services import account_get_or_create, credits_grant, credits_spend

    account = account_get_or_create(email="obs@example.org")
    credits_grant(account=account, amount=100)
    before = scrape()

    credits_spend(account=account, amount=7, subject="obs")

    after = scrape()
    assert value(after, "herder_credits_spent_total") - value(before, "herder_credits_spent_total") == 7


@pytest.mark.django_db
def test_engine_errors_are_counted(settings):
    before = scrape()
    settings.DOCKER_HOST = "unix:///nonexistent/herder-test-docker.sock"
    from herder.errors import RuntimeUnavailable

    with pytest.raises(RuntimeUnavailable):
        get_runtime().image_exists("herder/golem:latest")

    after = scrape()
    assert (
        value(after, "herder_engine_errors_total", reason="unreachable")
        - value(before, "herder_engine_errors_total", reason="unreachable")
        >= 1
    )


@pytest.mark.django_db
def test_requests_are_counted_by_route_name_not_path():
    before = scrape()
    http("GET", "/token/v1/inspect/not-a-token-1")
    http("GET", "/token/v1/inspect/not-a-token-2")
    http("GET", "/no/such/route")
    after = scrape()

    moved = {
        key: after[key] - before.get(key, 0)
        for key in after
        if key[0] == "herder_http_requests_total" and after[key] != before.get(key, 0)
    }
    routes = {dict(key[1:])["route"] for key in moved}
    assert "token-inspect" in routes and "unmatched" in routes
    assert not any("not-a-token" in str(key) for key in after)
    assert (
        value(after, "herder_http_requests_total", route="unmatched", code="404")
        - value(before, "herder_http_requests_total", route="unmatched", code="404")
        == 1
    )


@pytest.mark.django_db
def test_the_route_django_resolved_is_used_not_resolved_again(monkeypatch):
    from herder import requestlog

    def unused(path):
        raise AssertionError(f"resolved twice: {path}")

    monkeypatch.setattr(requestlog, "resolve", unused)
    before = scrape()
    assert http("GET", "/golem/v1/ls")["status"] == 200
    after = scrape()
    assert (
        value(after, "herder_http_requests_total", route="golem-list", code="200")
        - value(before, "herder_http_requests_total", route="golem-list", code="200")
        == 1
    )


# --- Who may scrape ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_scraping_is_for_loopback_or_the_token(settings):
    settings.HERDER_METRICS_TOKEN = "s3cret-scraper"

    assert http("GET", "/metrics", client="127.0.0.1")["status"] == 200
    assert http("GET", "/metrics", client="::1")["status"] == 200
    stranger = http("GET", "/metrics", client="203.0.113.9")
    assert stranger["status"] == 403
    assert json.loads(stranger["body"])["code"] == "forbidden"
    assert b"herder_" not in stranger["body"]
    assert (
        http("GET", "/metrics", client="203.0.113.9", headers={"authorization": "Bearer s3cret-scraper"})["status"]
        == 200
    )
    assert (
        http("GET", "/metrics", client="203.0.113.9", headers={"authorization": "Bearer s3cret-scrapes"})["status"]
        == 403
    )
    assert http("POST", "/metrics", client="127.0.0.1")["status"] == 405


@pytest.mark.django_db
def test_a_forwarded_request_is_judged_by_its_real_client(settings):
    # A reverse proxy on loopback that is not trusted: its requests are not loopback's.
    forwarded = {"x-forwarded-for": "203.0.113.9"}
    assert http("GET", "/metrics", client="127.0.0.1", headers=forwarded)["status"] == 403
    assert http("GET", "/metrics", client="127.0.0.1", headers={"x-real-ip": "203.0.113.9"})["status"] == 403
    # Trusted, it forwards the client's address, which is judged instead.
    settings.HERDER_TRUSTED_PROXIES = ["127.0.0.1"]
    assert http("GET", "/metrics", client="127.0.0.1", headers=forwarded)["status"] == 403
    settings.HERDER_METRICS_ALLOWED = ["203.0.113.0/24"]
    assert http("GET", "/metrics", client="127.0.0.1", headers=forwarded)["status"] == 200
    assert http("GET", "/metrics", client="127.0.0.1")["status"] == 403


@pytest.mark.django_db
def test_with_no_addresses_allowed_only_the_token_scrapes(settings):
    settings.HERDER_METRICS_ALLOWED = []
    assert http("GET", "/metrics", client="127.0.0.1")["status"] == 403
    settings.HERDER_METRICS_TOKEN = "t"
    assert http("GET", "/metrics", client="127.0.0.1", headers={"authorization": "Bearer t"})["status"] == 200


# --- Several processes -------------------------------------------------------------------------

_COUNT = """
import django
django.setup()
from herder import metrics
metrics.count_refusal("golem_total")
metrics.websockets.labels("minion").inc()
"""
_RENDER = """
import django
django.setup()
from prometheus_client import generate_latest
from herder import metrics
print(generate_latest(metrics.registry()).decode())
"""


def _python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_with_a_multiprocess_folder_a_scrape_sums_every_process(tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "herder.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "HERDER_DATA_DIR": str(tmp_path / "data"),
    }
    _python(_COUNT, env)
    _python(_COUNT, env)
    scraped = samples(_python(_RENDER, env))

    assert value(scraped, "herder_refused_total", reason="golem_total") == 2
    # Live gauges count only live processes: both counting processes have ended,
    # but nobody told (process_dead), so their sockets still count; once told, not.
    assert value(scraped, "herder_websockets", kind="minion") == 2
    from herder import metrics

    for pid_file in folder.glob("gauge_livesum_*.db"):
        metrics.process_dead(int(pid_file.stem.rsplit("_", 1)[1]), str(folder))
    scraped = samples(_python(_RENDER, env))
    assert value(scraped, "herder_websockets", kind="minion") == 0
    assert value(scraped, "herder_refused_total", reason="golem_total") == 2
    # And a fresh start empties the folder.
    metrics.multiprocess_reset(str(folder))
    assert not list(folder.glob("*.db"))


def test_a_bad_allowed_network_stops_the_start(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "herder.settings",
        "HERDER_DATA_DIR": str(tmp_path),
        "HERDER_METRICS_ALLOWED": "127.0.0.1,not-a-network",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "HERDER_METRICS_ALLOWED" in done.stderr
