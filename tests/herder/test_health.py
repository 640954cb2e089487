"""GET /healthz and GET /readyz: readiness follows the engine and Redis."""

from __future__ import annotations

import json
import socket

import pytest

from tests.herder.asgi_client import http


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_channel_layer():
    from channels.layers import channel_layers

    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def readyz() -> tuple[int, dict]:
    answer = http("GET", "/readyz")
    assert answer["headers"]["content-type"] == "application/json"
    return answer["status"], json.loads(answer["body"])


@pytest.mark.django_db
def test_healthz_answers_even_when_everything_else_is_down(settings, fresh_channel_layer):
    settings.DOCKER_HOST = "unix:///nonexistent/herder-test-docker.sock"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    answer = http("GET", "/healthz")
    assert answer["status"] == 200
    assert json.loads(answer["body"]) == {"status": "ok"}
    assert http("POST", "/healthz")["status"] == 405


@pytest.mark.docker
@pytest.mark.django_db
def test_readyz_is_ready_with_database_layer_engine_and_images(docker_engine, fresh_channel_layer):
    status, body = readyz()
    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "channel_layer", "engine", "images"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
def test_readyz_names_the_engine_when_it_is_unreachable(settings, fresh_channel_layer):
    settings.DOCKER_HOST = "unix:///nonexistent/herder-test-docker.sock"
    status, body = readyz()

    assert status == 503
    assert body["code"] == "not_ready"
    assert body["checks"]["engine"] == {"ok": False, "error": "unreachable"}
    assert body["checks"]["images"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"]["ok"] is True
    assert "engine" in body["detail"]
    assert "nonexistent" not in json.dumps(body)  # failures are named, not explained


@pytest.mark.docker
@pytest.mark.django_db
def test_readyz_names_redis_when_it_is_unreachable(settings, docker_engine, fresh_channel_layer):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    status, body = readyz()

    assert status == 503
    assert body["checks"]["channel_layer"]["ok"] is False
    assert body["checks"]["engine"]["ok"] is True
    assert body["detail"] == "Not ready: channel_layer."


@pytest.mark.docker
@pytest.mark.django_db
def test_readyz_names_missing_images(settings, docker_engine, fresh_channel_layer):
    settings.HERDER_MINION_IMAGES = {**settings.HERDER_MINION_IMAGES, "nope": "herder-test/missing:never"}
    status, body = readyz()

    assert status == 503
    assert body["checks"]["images"] == {"ok": False, "error": "missing: herder-test/missing:never"}
    assert body["checks"]["engine"]["ok"] is True


@pytest.mark.django_db
def test_an_engine_that_never_answers_costs_the_check_its_time_only(settings, fresh_channel_layer):
    # A blackholed engine: the connection is taken (the listen backlog) and never answered.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings.DOCKER_HOST = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        settings.HERDER_READY_TIMEOUT = 0.5
        status, body = readyz()

    assert status == 503
    assert body["checks"]["engine"] == {"ok": False, "error": "timeout"}
    assert body["checks"]["images"] == {"ok": False, "error": "timeout"}
    assert body["checks"]["database"]["ok"] is True
