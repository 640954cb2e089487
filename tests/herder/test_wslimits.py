"""WebSocket admission (herder/wslimits.py): sockets per client and in total on
every route, and the frame cap, in process and on the real servers."""

from __future__ import annotations

import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from herder.admission import recent_refusals
from herder.asgi import application
from herder.wslimits import snapshot
from tests.golems.conftest import Herder, herder_env, migrate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    from channels.layers import channel_layers

    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def socket_of(address: str, path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    communicator.scope["client"] = (address, 40000)
    return communicator


async def opened(address: str, path: str) -> WebsocketCommunicator:
    communicator = socket_of(address, path)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def refused(address: str, path: str) -> tuple[dict, int]:
    """Accepted only to be told why, then closed (the in-process server has no
    `websocket.http.response` extension)."""
    communicator = await opened(address, path)
    error = json.loads(await communicator.receive_from(5))
    close = await communicator.receive_output(5)
    assert close["type"] == "websocket.close"
    await communicator.wait(5)
    return error, close["code"]


def test_sockets_are_limited_per_client_and_in_total_on_every_route(settings):
    settings.HERDER_WS_MAX_PER_CLIENT = 2
    settings.HERDER_WS_MAX = 3
    a, b, c = "198.51.100.1", "198.51.100.2", "198.51.100.3"

    async def scenario():
        a1 = await opened(a, "/minion/v1/connect/limits-one?type=python")
        a2 = await opened(a, "/golem/v1/connect/limits-two")
        assert snapshot()["in_use"] == 2
        for path in (
            "/daemon/v1/attach/web",
            "/minion/v1/connect/limits-one",
            "/golem/v1/connect-to/limits-one/00000000-0000-0000-0000-000000000000",
            "/daemon/v1/proxy/web-x/",
        ):
            error, code = await refused(a, path)
            assert (error["type"], error["code"], code) == ("error", "too_many_requests", 4429), path
        # Another client is not affected, up to the total.
        b1 = await opened(b, "/minion/v1/connect/limits-one")
        error, code = await refused(c, "/minion/v1/connect/limits-one")
        assert (error["code"], code) == ("too_many_requests", 4429)
        assert "The herder is at its limit" in error["detail"]
        # A socket that leaves frees its place.
        await a1.disconnect()
        a3 = await opened(a, "/minion/v1/connect/limits-three")
        for communicator in (a2, a3, b1):
            await communicator.disconnect()
        assert snapshot()["in_use"] == 0

    run(scenario)
    refusals = recent_refusals()
    assert refusals["websocket_per_client"] >= 4 and refusals["websocket_total"] >= 1


def test_a_frame_over_the_cap_closes_the_socket_with_1009(settings):
    settings.HERDER_WS_MAX_FRAME = 1000

    async def scenario():
        minion = await opened("198.51.100.9", "/minion/v1/connect/limits-frame")
        await minion.send_to(text_data="x" * 1000)  # at the cap: kept for the golem
        await minion.send_to(bytes_data=b"x" * 1001)
        close = await minion.receive_output(5)
        assert (close["type"], close["code"]) == ("websocket.close", 1009)
        # Multi-byte characters count as their UTF-8 bytes.
        other = await opened("198.51.100.9", "/minion/v1/connect/limits-frame")
        await other.send_to(text_data="é" * 501)
        close = await other.receive_output(5)
        assert (close["type"], close["code"]) == ("websocket.close", 1009)

    run(scenario)


def run(scenario) -> None:
    async_to_sync(scenario)()


@pytest.mark.docker
@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_the_real_servers_refuse_past_the_limit_and_cap_frames(tmp_path, docker_engine, server):
    cap = 64 * 1024
    env = herder_env(tmp_path, HERDER_SERVER=server, HERDER_WS_MAX_PER_CLIENT="2", HERDER_WS_MAX_FRAME=str(cap))
    migrate(env)
    herder = Herder(env=env, log=tmp_path / "herder.log", herd=True)
    url = f"{herder.ws}/minion/v1/connect/limits-real?type=python"
    try:
        with ws_connect(url) as one, ws_connect(url):
            if server == "uvicorn":
                # Refused at the handshake: HTTP 429, Retry-After, the error as JSON.
                with pytest.raises(InvalidStatus) as denied:
                    ws_connect(url)
                response = denied.value.response
                assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
                assert json.loads(response.body)["code"] == "too_many_requests"
                # An answered handshake is complete: no error line for each refusal.
                assert "without completing handshake" not in herder.output()
            else:
                # Daphne has no HTTP answer to a WebSocket handshake: told, then closed.
                with ws_connect(url) as third:
                    assert json.loads(third.recv(timeout=10))["code"] == "too_many_requests"
                    with pytest.raises(ConnectionClosed) as closed:
                        third.recv(timeout=10)
                    assert closed.value.rcvd.code == 4429
            # The server itself refuses a message over HERDER_WS_MAX_FRAME: uvicorn
            # closes with 1009, Daphne (autobahn) drops the connection.
            one.send(b"x" * (cap + 1))
            with pytest.raises(ConnectionClosed) as closed:
                one.recv(timeout=10)
            if server == "uvicorn":
                assert closed.value.rcvd.code == 1009
            else:
                assert closed.value.rcvd is None
        # Both left: a new socket is let in, once the server has ended their
        # consumers (a moment after the client's close handshake).
        deadline = time.monotonic() + 5
        while True:
            try:
                with ws_connect(url):
                    break
            except InvalidStatus as refused:
                assert refused.response.status_code == 429 and time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        herder.stop()
        print(herder.output())


@pytest.mark.docker
def test_uvicorn_does_not_take_a_forwarded_for_header_from_an_untrusted_peer(tmp_path, docker_engine):
    """Without HERDER_TRUSTED_PROXIES, a client on loopback naming itself in
    X-Forwarded-For is still one client: uvicorn's own proxy-header handling
    (which trusts loopback by default) must not hand it another address."""
    env = herder_env(tmp_path, HERDER_SERVER="uvicorn", HERDER_WS_MAX_PER_CLIENT="1")
    env.pop("HERDER_TRUSTED_PROXIES", None)
    migrate(env)
    herder = Herder(env=env, log=tmp_path / "herder.log", herd=True)
    url = f"{herder.ws}/minion/v1/connect/forwarded?type=python"
    try:
        with ws_connect(url, additional_headers={"X-Forwarded-For": "203.0.113.1"}):
            with pytest.raises(InvalidStatus) as denied:
                ws_connect(url, additional_headers={"X-Forwarded-For": "203.0.113.2"})
            assert denied.value.response.status_code == 429
    finally:
        herder.stop()
