"""The proxy as an attacker meets it: cookies, origins, paths, slow daemons,
restarted daemons, through the herder's ASGI app against the real engine."""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator

from daemons.models import Daemon
from daemons.proxy import close_upstream_session
from daemons.services import daemon_supervise
from herder.asgi import application
from herder.runtime import Handle, get_runtime
from tests.daemons.test_daemons import spawn_ready, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

ORIGIN = "http://{name}.daemons.localhost:8000"


def scope_of(method: str, raw_path: str, host: str = "herder.test", headers=(), query: bytes = b"") -> dict:
    from urllib.parse import unquote

    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query,
        "scheme": "http",
        "headers": [(b"host", host.encode()), *headers],
        "client": ("127.0.0.7", 5000),
    }


async def _request(scope: dict, timeout: float = 30):
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout)
    body = bytearray()
    while True:
        message = await communicator.receive_output(timeout)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return start["status"], start["headers"], bytes(body)


def request(method: str, raw_path: str, **kwargs):
    query = kwargs.pop("query", b"")

    async def run():
        try:
            return await _request(scope_of(method, raw_path, query=query, **kwargs))
        finally:
            await close_upstream_session()

    return async_to_sync(run)()


def header_values(headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]


def host_of(answer: dict) -> str:
    return answer["URL"].split("://", 1)[1].rstrip("/")


def test_path_route_forwards_no_cookie_sets_none_and_is_sandboxed(alice):
    answer = spawn_ready(alice, name="web")
    prefix = answer["ProxyURL"].rstrip("/")

    status, headers, body = request(
        "GET",
        f"{prefix}/seen",
        headers=[(b"cookie", b"sessionid=operator-session; csrftoken=operator-csrf"), (b"authorization", b"Bearer x")],
    )
    assert status == 200
    seen = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    assert "cookie" not in seen, "the herder's cookies reached the daemon"
    csp = b" ".join(header_values(headers, b"content-security-policy"))
    assert csp.startswith(b"sandbox ") and b"allow-scripts" in csp and b"allow-same-origin" not in csp
    assert header_values(headers, b"x-content-type-options") == [b"nosniff"]

    status, headers, _ = request("GET", f"{prefix}/set-cookie", query=b"cookie=sessionid%3Dplanted%3B%20Path%3D%2F")
    assert status == 200 and header_values(headers, b"set-cookie") == []


def test_daemon_origin_routes_by_host_and_keeps_its_own_cookies(alice, settings):
    settings.HERDER_DAEMON_ORIGIN = ORIGIN
    answer = spawn_ready(alice, name="site")
    host = host_of(answer)
    assert answer["URL"].startswith("http://site-") and answer["URL"].endswith(".daemons.localhost:8000/")

    # Every path on the daemon's host is the daemon's, the herder's admin too.
    status, headers, body = request("GET", "/admin/", host=host, headers=[(b"cookie", b"app=1")])
    seen = json.loads(body)
    assert status == 200 and seen["path"] == "/admin/"
    assert seen["headers"].get("Cookie") == "app=1"
    assert header_values(headers, b"content-security-policy") == []

    # Its cookies come back, but never with a Domain that could cover the herder.
    status, headers, _ = request(
        "GET",
        "/set-cookie",
        host=host,
        query=b"cookie=sessionid%3Dx%3B%20Domain%3Dlocalhost%3B%20Path%3D%2F%3B%20HttpOnly",
    )
    assert header_values(headers, b"set-cookie") == [b"sessionid=x; Path=/; HttpOnly"]

    # An unknown daemon name on the daemons' domain is a 404, not the herder.
    status, _, body = request("GET", "/admin/", host="nobody-0123456789abcdef.daemons.localhost:8000")
    assert status == 404 and json.loads(body)["code"] == "not_found"
    # The herder's own host is still the herder, and so is a sibling host that
    # is not a daemon's label.
    assert request("GET", "/daemon/v1/ls", host="herder.test")[0] == 401
    assert request("GET", "/daemon/v1/ls", host="admin.daemons.localhost:8000")[0] == 401

    async def websocket_on_origin():
        communicator = WebsocketCommunicator(application, "/ws", headers=[(b"host", host.encode())])
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await communicator.send_to(text_data="ping")
        assert await communicator.receive_from(10) == "ping"
        await communicator.disconnect()

    async_to_sync(websocket_on_origin)()


@pytest.mark.parametrize(
    "bad",
    [
        "/x%0D%0AHost:%20evil",
        "/a%2Fb",
        "/a%3Fb",
        "/a%00b",
        "/a%23b",
        "/a%5Cb",
        "/a/../b",
        "/a/%2e%2E/b",
        "/a/./b",
        "/a\\b",
    ],
)
def test_paths_that_change_meaning_upstream_are_400(alice, settings, bad):
    settings.HERDER_DAEMON_ORIGIN = ORIGIN
    answer = spawn_ready(alice, name="paths")
    prefix = answer["ProxyURL"].rstrip("/")

    for kwargs in ({"raw_path": prefix + bad}, {"raw_path": bad, "host": host_of(answer)}):
        raw_path = kwargs.pop("raw_path")
        status, _, body = request("GET", raw_path, **kwargs)
        assert status == 400 and json.loads(body)["code"] == "bad_path", (raw_path, body)

    # Ordinary escapes pass through as sent.
    status, _, body = request("GET", f"{prefix}/a%20b/%C3%A9")
    assert status == 200 and json.loads(body)["path"] == "/a b/\u00e9"


def test_a_hanging_daemon_is_504_after_the_read_timeout_and_others_are_served(alice, settings):
    settings.HERDER_PROXY_READ_TIMEOUT = 1.0
    settings.HERDER_PROXY_MAX_PER_DAEMON = 2
    hanging = spawn_ready(alice, name="hangs")["ProxyURL"].rstrip("/")
    healthy = spawn_ready(alice, name="fine")["ProxyURL"].rstrip("/")

    async def run():
        try:
            status, _, body = await _request(scope_of("GET", f"{hanging}/sleep", query=b"seconds=30"))
            assert status == 504 and json.loads(body)["code"] == "gateway_timeout"

            # Its slots taken by slow requests, a third is refused at once...
            settings.HERDER_PROXY_READ_TIMEOUT = 20.0
            await close_upstream_session()  # the timeouts are the session's
            slow = [
                asyncio.ensure_future(_request(scope_of("GET", f"{hanging}/sleep", query=b"seconds=3")))
                for _ in range(2)
            ]
            await asyncio.sleep(1.0)
            status, headers, body = await _request(scope_of("GET", f"{hanging}/hello"))
            assert status == 429 and json.loads(body)["code"] == "too_many_requests"
            assert header_values(headers, b"retry-after") == [b"1"]
            # ...while another daemon is served meanwhile.
            status, _, body = await _request(scope_of("GET", f"{healthy}/hello"))
            assert (status, body) == (200, b"hello")
            assert [(await task)[0] for task in slow] == [200, 200]
            # The slots came back.
            assert (await _request(scope_of("GET", f"{hanging}/hello")))[0] == 200
        finally:
            await close_upstream_session()

    async_to_sync(run)()


def test_the_proxy_follows_a_daemon_docker_restarted_on_new_ports(alice):
    answer = spawn_ready(alice, name="phoenix")
    daemon = Daemon.objects.get()
    handle = Handle(id=daemon.container_id, name=daemon.full_name)
    before = answer["Ports"]["8080"]
    assert request("GET", f"{answer['ProxyURL']}hello")[2] == b"hello"

    # Its process dies; Docker's on-failure policy starts it again, published anew.
    get_runtime().exec(
        handle,
        [
            "python3",
            "-c",
            (
                "import os, signal\n"
                "for p in os.listdir('/proc'):\n"
                "    if p.isdigit() and int(p) != os.getpid() and b'daemon-echo' in open(f'/proc/{p}/cmdline', 'rb').read():\n"
                "        os.kill(int(p), signal.SIGKILL)\n"
            ),
        ],
    )
    assert wait_until(lambda: get_runtime().published_ports(handle).get(8080) not in (None, before))
    after = get_runtime().published_ports(handle)[8080]
    assert wait_until(lambda: _answers(after))

    status, _, body = request("GET", f"{answer['ProxyURL']}hello")
    assert (status, body) == (200, b"hello")
    assert Daemon.objects.get().host_ports == {"8080": after}


def _answers(port: int) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=2).read() == b"hello"
    except OSError:
        return False


def test_the_supervisor_removes_a_container_no_row_owns(alice):
    spawn_ready(alice, name="lost")
    volume = Daemon.objects.get().volume
    # What concurrent spawns left on main: a container no row points at.
    Daemon.objects.all().delete()

    try:
        daemon_supervise()

        assert get_runtime().list(kind="daemon", ours=True) == []
        assert get_runtime().networks(kind="daemon", ours=True) == []
    finally:
        get_runtime().remove_volume(volume)  # the row that named it is gone


def test_the_supervisor_adopts_a_container_its_spawn_never_recorded(alice):
    from datetime import timedelta

    from django.utils import timezone

    spawn_ready(alice, name="orphan")
    daemon = Daemon.objects.get()
    container = daemon.container_id
    # The herder died after starting the container, before recording it.
    Daemon.objects.filter(pk=daemon.pk).update(
        state="starting", container_id="", claim="x", claimed=timezone.now() - timedelta(minutes=5)
    )

    daemon_supervise()

    adopted = Daemon.objects.get()
    assert (adopted.state, adopted.container_id, adopted.claim) == ("running", container, "")
    assert [c.handle.id for c in get_runtime().list(kind="daemon", ours=True)] == [container]


def test_an_idle_websocket_is_closed_and_frees_its_slot(alice, settings):
    settings.HERDER_PROXY_IDLE_TIMEOUT = 1.0
    settings.HERDER_PROXY_MAX_PER_DAEMON = 1
    answer = spawn_ready(alice, name="quiet")

    async def run():
        communicator = WebsocketCommunicator(
            application, f"{answer['ProxyURL']}ws", headers=[(b"host", b"herder.test")]
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        # Its one slot is taken: a second socket is refused.
        second = WebsocketCommunicator(application, f"{answer['ProxyURL']}ws", headers=[(b"host", b"herder.test")])
        connected, code = await second.connect(timeout=10)
        assert (connected, code) == (False, 4429)
        # Silent both ways: closed after the idle timeout.
        closed = await communicator.receive_output(10)
        assert closed["type"] == "websocket.close"
        third = WebsocketCommunicator(application, f"{answer['ProxyURL']}ws", headers=[(b"host", b"herder.test")])
        connected, _ = await third.connect(timeout=10)
        assert connected
        await third.disconnect()

    async_to_sync(run)()


def test_the_path_route_websocket_forwards_no_cookie(alice):
    answer = spawn_ready(alice, name="wsc")

    async def run():
        communicator = WebsocketCommunicator(
            application,
            f"{answer['ProxyURL']}ws",
            headers=[(b"host", b"herder.test"), (b"cookie", b"sessionid=operator-session")],
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await communicator.disconnect()

    async_to_sync(run)()
    # The daemon describes what it got on a plain request; a WebSocket's headers
    # go through the same filter (_forwarded_headers), checked here directly.
    from daemons.proxy import Route, _forwarded_headers

    scope = {"headers": [(b"host", b"h"), (b"cookie", b"sessionid=s")], "client": ("1.2.3.4", 1)}
    assert "cookie" not in {k for k, _ in _forwarded_headers(scope, Route(key="x", on_origin=False, path="/"))}
    assert ("cookie", "sessionid=s") in _forwarded_headers(scope, Route(key="x", on_origin=True, path="/"))


def test_requests_without_a_body_keep_their_connection_and_head_gets_no_body(alice):
    """GETs go through the proxy's own client (daemons/upstream.py), one after
    another on a kept connection; a HEAD's answer has no body, whatever its
    Content-Length says (aiohttp relays it)."""
    answer = spawn_ready(alice, name="kept")
    prefix = answer["ProxyURL"].rstrip("/")

    async def run():
        try:
            seen = []
            for _ in range(3):
                status, _, body = await _request(scope_of("GET", f"{prefix}/describe"))
                assert status == 200
                seen.append(json.loads(body)["headers"])
            head = await _request(scope_of("HEAD", f"{prefix}/hello"))
            return seen, head
        finally:
            await close_upstream_session()

    seen, (status, headers, body) = async_to_sync(run)()
    assert all(h["Host"].startswith("127.0.0.1:") and h["X-Forwarded-Host"] == "herder.test" for h in seen)
    assert status == 200 and body == b""
    assert header_values(headers, b"content-length") == [b"5"]
