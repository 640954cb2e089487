"""Request ids, JSON log lines and /metrics through `herd` on a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.herder.asgi_client import samples, value

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["uvicorn", "daphne"])
def herd(request, tmp_path):
    env = {
        **os.environ,
        "HERDER_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "herder.settings",
        "HERDER_LOG_FORMAT": "json",
        "HERDER_WS_MAX_PER_CLIENT": "1",
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    output = open(tmp_path / "herd.log", "w+b")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port), "--server", request.param, "--no-supervisor"],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "herd.log").read_text()
            time.sleep(0.1)
    process.port, process.server = port, request.param

    def log_lines() -> list[dict]:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        output.seek(0)
        found = []
        for line in output.read().decode(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pass  # the server's own banner lines
        return found

    process.log_lines = log_lines
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    output.close()


def get(port: int, path: str, headers: dict | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_ids_lines_and_metrics_through_a_real_server(herd):
    status, headers, _ = get(herd.port, "/healthz")
    assert status == 200 and len(headers["X-Request-Id"]) == 32
    status, missing, body = get(herd.port, "/no/such/route")
    assert status == 404 and json.loads(body)["code"] == "not_found"

    # WebSockets: past the client's limit (1) the handshake is refused, with an id too.
    # (Daphne sends no headers of the application's with a handshake.)
    with connect(f"ws://127.0.0.1:{herd.port}/minion/v1/connect/obs-served?type=python") as first:
        if herd.server == "uvicorn":
            assert first.response.headers["X-Request-Id"]
            with pytest.raises(InvalidStatus) as refused:
                connect(f"ws://127.0.0.1:{herd.port}/minion/v1/connect/obs-served?type=python")
            assert refused.value.response.status_code == 429
            assert refused.value.response.headers["X-Request-Id"]
        time.sleep(1.5)  # the loop's lag is sampled every second
        status, _, text = get(herd.port, "/metrics")
    assert status == 200
    scraped = samples(text.decode())
    assert value(scraped, "herder_http_requests_total", route="unmatched", code="404") == 1
    assert value(scraped, "herder_http_requests_total", route="healthz", code="200") == 1
    assert ("herder_event_loop_lag_seconds",) in scraped
    assert 0 <= value(scraped, "herder_event_loop_lag_seconds") < 1
    assert value(scraped, "herder_websockets", kind="minion") == 1
    if herd.server == "uvicorn":
        assert value(scraped, "herder_refused_total", reason="websocket_per_client") == 1

    lines = herd.log_lines()
    requests = [line for line in lines if line.get("event") == "http.request"]
    (not_found,) = [line for line in requests if line["route"] == "unmatched"]
    assert not_found["request_id"] == missing["X-Request-Id"]
    assert (not_found["status"], not_found["method"], not_found["client"]) == (404, "GET", "127.0.0.1")
    # Django's own line about that 404 carries the same id.
    assert any(
        line.get("logger") == "django.request" and line["request_id"] == missing["X-Request-Id"] for line in lines
    )
    sockets = [line for line in lines if line.get("event") == "websocket"]
    assert sockets and sockets[0]["kind"] == "minion"
