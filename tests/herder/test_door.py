"""Refusals at the door (herder/door.py): the real uvicorn server with the
herder's protocol and the real judges; behind the door, a stand-in for the
ASGI layers that records every request reaching it, so a test sees which
ones the door answered itself."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse

import pytest
import uvicorn
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from herder import metrics
from herder.admission import rate_count, recent_refusals
from herder.asgi import door
from herder.servers import _http_protocol, _websocket_protocol
from herder.wslimits import sockets
from minions.services import minion_slots

CLIENT = "addr:127.0.0.1"


class Behind:
    """The layers behind the door: 204 for HTTP, a closed handshake (403) for WebSockets."""

    def __init__(self) -> None:
        self.reached: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send):
        self.reached.append((scope["type"], scope["path"]))
        if scope["type"] == "http":
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1000})


@pytest.fixture
def served():
    """(port, Behind) of a uvicorn server in a thread of this process."""
    behind = Behind()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        behind,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=_http_protocol(door),
        ws=_websocket_protocol(),
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield port, behind
    server.should_exit = True
    thread.join(10)
    # Nothing still counted as held: written, or let go when its connection ended.
    assert door.held == 0


def exchange(port: int, request: bytes) -> tuple[int, dict, bytes]:
    """Send raw bytes; the answer's status, headers and body (read to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post(path: str, body: bytes = b"", host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def assert_refused(status: int, headers: dict, body: bytes) -> None:
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert headers["connection"] == "close" and len(headers["x-request-id"]) == 32
    assert json.loads(body)["code"] == "too_many_requests"


def count_429(route: str) -> float:
    return metrics.http_requests.labels(route, "429")._value.get()


@pytest.fixture
def held():
    """Slots taken in the test's name: given back at its end."""
    taken: list = []
    yield taken
    for slots, client in taken:
        slots.release(client)


def test_a_websocket_past_its_limit_is_answered_at_the_door(settings, served, held):
    port, behind = served
    settings.HERDER_WS_MAX_PER_CLIENT = 1
    url = f"ws://127.0.0.1:{port}/minion/v1/connect/door?type=python"
    # Under the limit: the handshake goes on to the layers.
    with pytest.raises(InvalidStatus):
        ws_connect(url, open_timeout=5)
    assert behind.reached == [("websocket", "/minion/v1/connect/door")]

    sockets.acquire(CLIENT)
    held.append((sockets, CLIENT))
    refusals = recent_refusals().get("websocket_per_client", 0)
    with pytest.raises(InvalidStatus) as denied:
        ws_connect(url, open_timeout=5)
    response = denied.value.response
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert json.loads(response.body)["code"] == "too_many_requests"
    assert len(response.headers["X-Request-Id"]) == 32
    assert recent_refusals()["websocket_per_client"] == refusals + 1
    assert len(behind.reached) == 1  # nothing behind the door saw it


def test_a_minion_run_past_the_client_and_its_queue_is_answered_at_the_door(settings, served, held):
    port, behind = served
    settings.HERDER_MINION_MAX_PER_CLIENT = 1
    settings.HERDER_MINION_QUEUE = 0
    form = urllib.parse.urlencode({"env": "python", "main.py": "print(1)"}).encode()

    minion_slots.acquire(CLIENT)
    held.append((minion_slots, CLIENT))
    before = count_429("minion-spawn")
    # The body came with the headers; a request pipelined behind it (on a
    # connection the client meant to keep) is never served.
    keep_alive = post("/minion/v1/spawn", form).replace(b"Connection: close\r\n", b"")
    assert_refused(*exchange(port, keep_alive + post("/minion/v1/elsewhere", form)))
    assert behind.reached == []
    assert count_429("minion-spawn") == before + 1

    # Another path, a token holder (its limit needs its account), a daemon's
    # origin (the proxy's, whatever the path): all go on to the layers.
    assert exchange(port, post("/minion/v1/elsewhere", form))[0] == 204
    assert exchange(port, post("/minion/v1/spawn?token=x", form))[0] == 204
    settings.HERDER_DAEMON_ORIGIN = "http://{name}.daemons.localhost"
    assert exchange(port, post("/minion/v1/spawn", form, host="d1-0123456789abcdef.daemons.localhost"))[0] == 204
    assert behind.reached == [
        ("http", "/minion/v1/elsewhere"),
        ("http", "/minion/v1/spawn"),
        ("http", "/minion/v1/spawn"),
    ]

    # With its slot back, the client is let in again.
    held.clear()
    minion_slots.release(CLIENT)
    assert exchange(port, post("/minion/v1/spawn", form))[0] == 204


def test_password_guesses_past_the_rate_are_answered_at_the_door(settings, served):
    port, behind = served
    settings.HERDER_TOKEN_GENERATE_RATE = "2/h"
    form = b"email=a%40example.org&password=wrong"
    assert exchange(port, post("/token/v1/generate", form))[0] == 204
    for _ in range(2):
        rate_count("token_generate", CLIENT, settings.HERDER_TOKEN_GENERATE_RATE)
    status, headers, body = exchange(port, post("/token/v1/generate", form))
    assert_refused(status, headers, body)
    assert headers["access-control-allow-origin"] == "*"
    assert len(behind.reached) == 1


def test_the_door_answers_in_turn_on_a_pipelined_connection(settings, served, held):
    """A refusal pipelined behind a request in progress is not written before
    that request's answer: the door leaves it to the layers."""
    port, behind = served
    settings.HERDER_MINION_MAX_PER_CLIENT = 1
    settings.HERDER_MINION_QUEUE = 0
    minion_slots.acquire(CLIENT)
    held.append((minion_slots, CLIENT))
    first = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
    status, _, _ = exchange(port, first + post("/minion/v1/spawn", b"a=1"))
    assert status == 204
    assert behind.reached == [("http", "/first"), ("http", "/minion/v1/spawn")]


HANDSHAKE = (
    b"GET /minion/v1/connect/door?type=python HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def wait_until(condition, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def retrying(settings, held):
    """A client past its sockets whose every refusal is past its pace."""
    settings.HERDER_WS_MAX_PER_CLIENT = 1
    settings.HERDER_REFUSAL_DELAY = 1.0
    settings.HERDER_REFUSAL_DELAY_AFTER = 0
    sockets.acquire(CLIENT)
    held.append((sockets, CLIENT))
    return settings


def test_refusals_past_a_clients_pace_are_held_back_unread(served, retrying):
    port, behind = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(HANDSHAKE)
        wait_until(lambda: door.held == 1)
        conn.settimeout(0.2)
        with pytest.raises(TimeoutError):
            conn.recv(1)  # nothing written while held
        conn.settimeout(5)
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 429 ") and b"\r\nretry-after: " in answer
    wait_until(lambda: door.held == 0)
    assert behind.reached == []


def test_no_more_than_the_most_held_and_a_client_leaving_frees_its_place(served, retrying):
    port, _ = served
    retrying.HERDER_REFUSAL_DELAY_MAX_HELD = 1
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    first.sendall(HANDSHAKE)
    wait_until(lambda: door.held == 1)
    # No room to hold another: answered at once, while the first is still held.
    status, headers, _ = exchange(port, HANDSHAKE)
    assert status == 429 and door.held == 1
    # The first client leaves: its place is given back once its delay is over.
    first.close()
    wait_until(lambda: door.held == 0)


def test_pace_counts_each_client_per_second_and_bounds_its_keys():
    from herder.door import Pace

    pace = Pace(max_keys=2)
    assert [pace.count("a", 10.1), pace.count("a", 10.9), pace.count("b", 10.5)] == [1, 2, 1]
    # A third address within the second shares the overflow count.
    assert [pace.count("c", 10.6), pace.count("d", 10.7)] == [1, 2]
    assert pace.count("a", 11.0) == 1  # a new second


def test_the_server_stops_with_an_answer_held(served, retrying):
    """The fixture stops the server with the connection still held: it is let
    go (the fixture checks nothing is left counted)."""
    port, _ = served
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn.sendall(HANDSHAKE)
    wait_until(lambda: door.held == 1)


@pytest.mark.django_db
def test_a_daemon_spawn_without_a_token_is_answered_at_the_door_as_the_view_would(served, client):
    port, behind = served
    status, headers, body = exchange(port, post("/daemon/v1/spawn", b"name=x"))
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="herder"'
    assert "retry-after" not in headers and len(headers["x-request-id"]) == 32
    assert behind.reached == []
    # The same answer the view gives (Django's test client: no door in front).
    view = client.post("/daemon/v1/spawn", {"name": "x"})
    assert view.status_code == 401 and json.loads(body) == view.json()
    # With a token (valid or not: the layers behind judge it), it goes on.
    assert exchange(port, post("/daemon/v1/spawn?token=x", b"name=x"))[0] == 204
    assert behind.reached == [("http", "/daemon/v1/spawn")]


def test_a_judge_that_fails_leaves_the_request_to_the_layers(served, monkeypatch):
    """(The cache down, say): the request goes on, where the layers answer it."""
    port, behind = served

    def broken(scope):
        raise ConnectionError("the cache is down")

    monkeypatch.setitem(door.http, "/token/v1/generate", broken)
    assert exchange(port, post("/token/v1/generate", b"password=x"))[0] == 204
    assert behind.reached == [("http", "/token/v1/generate")]
