"""Request ids on every answer and in every log line of the request; one
structured line per request; HERDER_LOG_FORMAT."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import ApplicationCommunicator

from herder.asgi import application
from herder.logs import JsonFormatter, TextFormatter
from herder.requestlog import RequestLog
from tests.herder.asgi_client import ahttp, http, scrape, value

ROOT = Path(__file__).resolve().parents[2]
GENERATED = re.compile(r"[0-9a-f]{32}")


def lines(caplog, logger: str = "herder.request") -> list[dict]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(record)) for record in caplog.records if record.name == logger]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "method, path, headers, status",
    [
        ("GET", "/healthz", {}, 200),
        ("GET", "/no/such/route", {}, 404),
        ("POST", "/golem/v1/ls", {}, 405),
        ("POST", "/minion/v1/spawn", {"content-length": "12abc"}, 400),  # answered by RawInputGuard
        ("GET", "/metrics", {}, 403),
    ],
)
def test_every_answer_carries_a_request_id(method, path, headers, status):
    client = "203.0.113.7" if path == "/metrics" else "127.0.0.1"
    answer = http(method, path, headers=headers, client=client)
    assert answer["status"] == status, answer
    assert GENERATED.fullmatch(answer["headers"]["x-request-id"])


@pytest.mark.django_db
def test_each_request_gets_its_own_id_and_one_json_line(caplog):
    caplog.set_level(logging.INFO, logger="herder.request")
    first = http("GET", "/no/such/route", client="198.51.100.4")
    second = http("GET", "/golem/v1/ls")
    assert first["headers"]["x-request-id"] != second["headers"]["x-request-id"]

    logged = lines(caplog)
    assert len(logged) == 2
    line = logged[0]
    assert line["request_id"] == first["headers"]["x-request-id"]
    assert line["event"] == "http.request"
    assert (line["method"], line["route"], line["status"], line["client"]) == ("GET", "unmatched", 404, "198.51.100.4")
    assert isinstance(line["duration_ms"], float)
    assert (logged[1]["route"], logged[1]["status"]) == ("golem-list", 200)


@pytest.mark.django_db
def test_lines_logged_inside_the_request_carry_its_id(caplog):
    # Django logs the 404 from the thread the view ran in.
    caplog.set_level(logging.WARNING, logger="django.request")
    answer = http("GET", "/no/such/route")
    inside = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "django.request"]
    assert inside and inside[-1]["request_id"] == answer["headers"]["x-request-id"]
    assert inside[-1]["message"].startswith("Not Found")


@pytest.mark.django_db
def test_paths_never_reach_the_request_line(caplog):
    caplog.set_level(logging.INFO, logger="herder.request")
    http("GET", "/token/v1/inspect/eyJsecret-token-text", query="token=another-secret")
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records if r.name == "herder.request")
    assert "token-inspect" in text
    assert "secret" not in text


@pytest.mark.django_db
def test_an_incoming_id_is_kept_only_from_a_trusted_proxy_and_only_when_safe(settings):
    sent = {"x-request-id": "edge-1234.abc"}
    assert http("GET", "/healthz", headers=sent)["headers"]["x-request-id"] != "edge-1234.abc"

    settings.HERDER_TRUSTED_PROXIES = ["127.0.0.1"]
    assert http("GET", "/healthz", headers=sent)["headers"]["x-request-id"] == "edge-1234.abc"
    for unsafe in ("x" * 65, "two words", 'quote"d', "new\nline", ""):
        answered = http("GET", "/healthz", headers={"x-request-id": unsafe})["headers"]["x-request-id"]
        assert GENERATED.fullmatch(answered), unsafe
    # Only one X-Request-Id goes out, ours.
    answer = async_to_sync(ahttp)("GET", "/healthz", headers=sent)
    assert answer["headers"]["x-request-id"] == "edge-1234.abc"


@pytest.mark.django_db(transaction=True)
def test_a_websocket_handshake_carries_the_id_and_is_logged(caplog):
    from channels.layers import channel_layers

    channel_layers.backends = {}
    caplog.set_level(logging.INFO, logger="herder.request")

    async def scenario():
        scope = {
            "type": "websocket",
            "path": "/minion/v1/connect/obs-log",
            "query_string": b"type=python",
            "headers": [],
            "client": ("127.0.0.1", 40001),
            "subprotocols": [],
        }
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "websocket.connect"})
        accept = await communicator.receive_output(5)
        assert accept["type"] == "websocket.accept"
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await communicator.wait(5)
        return dict(accept["headers"])[b"x-request-id"].decode()

    rid = async_to_sync(scenario)()
    logged = [line for line in lines(caplog) if line["event"] == "websocket"]
    assert len(logged) == 1
    assert (logged[0]["kind"], logged[0]["status"], logged[0]["request_id"]) == ("minion", 101, rid)
    channel_layers.backends = {}


def test_an_inner_layer_that_fails_is_a_json_500_with_the_id(caplog):
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    async def scenario():
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/healthz",
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 1),
        }
        communicator = ApplicationCommunicator(RequestLog(broken), scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(5)
        body = await communicator.receive_output(5)
        await communicator.wait(5)
        return start, body

    caplog.set_level(logging.INFO, logger="herder.request")
    start, body = async_to_sync(scenario)()
    assert start["status"] == 500
    rid = dict(start["headers"])[b"x-request-id"].decode()
    assert json.loads(body["body"])["code"] == "server_error"
    failures = [r for r in caplog.records if r.exc_info]
    assert failures and failures[0].request_id == rid


def test_text_lines_name_the_request_and_quote_what_needs_it():
    from herder.logs import log_event, request_id

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("herder.test-text")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    token = request_id.set("abc123")
    try:
        log_event(logger, "golem.stop", webstrate="w1", error="its container exited", state=None)
    finally:
        request_id.reset(token)
    line = TextFormatter().format(records[0])
    assert line.endswith('[abc123]: golem.stop webstrate=w1 error="its container exited"'), line


def _settings_log(env: dict) -> subprocess.CompletedProcess:
    code = (
        "import django, logging; django.setup(); "
        "from herder.logs import log_event; log_event(logging.getLogger('herder.x'), 'hello', n=1)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "herder.settings", **env},
    )


def test_log_format_is_a_setting(tmp_path):
    data = {"HERDER_DATA_DIR": str(tmp_path)}
    as_json = _settings_log({**data, "HERDER_LOG_FORMAT": "json"})
    assert as_json.returncode == 0, as_json.stderr
    line = json.loads(as_json.stderr.strip().splitlines()[-1])
    assert (line["event"], line["n"], line["request_id"], line["logger"]) == ("hello", 1, "-", "herder.x")

    as_text = _settings_log(data)
    assert as_text.stderr.strip().endswith("INFO herder.x [-]: hello n=1"), as_text.stderr

    wrong = _settings_log({**data, "HERDER_LOG_FORMAT": "xml"})
    assert wrong.returncode != 0 and "HERDER_LOG_FORMAT" in wrong.stderr


@pytest.mark.django_db
def test_refusals_get_one_line_per_client_and_route_a_window_counting_the_rest(caplog, settings):
    settings.HERDER_TOKEN_PASSWORD = "right"
    settings.HERDER_TOKEN_GENERATE_RATE = "1/h"
    settings.HERDER_LOG_REFUSALS_EVERY = 0.5
    caplog.set_level(logging.INFO, logger="herder.request")
    form = {"content-type": "application/x-www-form-urlencoded"}

    def guess(client: str) -> int:
        return http("POST", "/token/v1/generate", headers=form, body=b"password=guess", client=client)["status"]

    assert [guess("198.51.100.30") for _ in range(6)] == [401] + [429] * 5
    assert guess("198.51.100.31") == 401 and guess("198.51.100.31") == 429
    time.sleep(0.6)
    assert guess("198.51.100.30") == 429

    logged = [(line["client"], line["status"], line.get("unlogged")) for line in lines(caplog)]
    assert logged == [
        ("198.51.100.30", 401, None),
        ("198.51.100.30", 429, 0),  # the first refusal, in full
        ("198.51.100.31", 401, None),
        ("198.51.100.31", 429, 0),  # another client: a line of its own
        ("198.51.100.30", 429, 4),  # the next window: the four left out are counted
    ]
    scraped = scrape()
    assert value(scraped, "herder_http_requests_total", route="token-generate", code="429") >= 7


def test_refusal_lines_stay_bounded_under_a_flood_from_many_addresses(settings):
    from herder.requestlog import RefusalLines

    settings.HERDER_LOG_REFUSALS_EVERY = 10
    lines_ = RefusalLines(max_keys=100)
    logged = [lines_.take(f"10.0.{n // 256}.{n % 256}", "minion-spawn", now=1.0) for n in range(1000)]
    assert len(lines_._keys) <= 101
    # Past the bound, new addresses share one key: one more line, then counted.
    assert sum(1 for n in logged if n is not None) == 101


@pytest.mark.parametrize(
    "peer, trusted, forwarded, scheme",
    [
        ("10.0.0.5", "10.0.0.0/8", "https", "https"),  # a TLS proxy in front
        ("10.0.0.5", "10.0.0.0/8", "http, https", "https"),  # the last hop's word
        ("203.0.113.9", "10.0.0.0/8", "https", "http"),  # not a trusted proxy
        ("10.0.0.5", "", "https", "http"),  # no proxy trusted at all
        ("10.0.0.5", "10.0.0.0/8", "gopher", "http"),
    ],
)
def test_the_scheme_is_taken_from_a_trusted_proxy_only(settings, peer, trusted, forwarded, scheme):
    settings.HERDER_TRUSTED_PROXIES = [trusted] if trusted else []
    seen = {}

    async def app(scope, receive, send):
        seen["scheme"] = scope["scheme"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario():
        communicator = ApplicationCommunicator(
            RequestLog(app),
            {
                "type": "http",
                "method": "GET",
                "path": "/healthz",
                "scheme": "http",
                "headers": [(b"x-forwarded-proto", forwarded.encode())],
                "client": (peer, 1234),
                "query_string": b"",
            },
        )
        await communicator.send_input({"type": "http.request", "body": b""})
        await communicator.receive_output(5)
        await communicator.receive_output(5)

    async_to_sync(scenario)()
    assert seen["scheme"] == scheme
