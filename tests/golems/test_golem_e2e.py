"""End to end in real Chromium: the herder spawns a golem container for a webstrate
page served by the test; the page's golem code answers a Python ad-hoc minion."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.sync.client import connect

from herder.runtime import get_runtime
from tests.golems.conftest import Herder, free_port, herder_env, migrate, webstrate_id

pytestmark = pytest.mark.docker

# The golem's code: open the control socket, accept every minion, answer upper-cased.
GOLEM_CODE = """
var id = herder.webstrateId();
// Only the webstrates server and the herder resolve: "localhost" does not.
fetch(location.origin + "/allowed").catch(function () {});
fetch("__LEAK__/leak").catch(function () {});
fetch("__OTHER__/leak-ip", {mode: "no-cors"}).catch(function () {});
var control = new WebSocket(herder.ws + "/golem/v1/connect/" + id);
control.onmessage = function (message) {
  var event = JSON.parse(message.data);
  if (event.Event !== "minion-connected") return;
  var minion = new WebSocket(herder.ws + "/golem/v1/connect-to/" + id + "/" + event.ID);
  minion.onmessage = function (frame) {
    if (typeof frame.data === "string" && frame.data.indexOf("{") !== 0) {
      minion.send(frame.data.toUpperCase());
    }
  };
};
"""


def webstrate_page(herder_url: str, other_url: str, leak_url: str) -> bytes:
    golem_code = GOLEM_CODE.replace("__OTHER__", other_url).replace("__LEAK__", leak_url)
    return f"""<!doctype html>
<html><head><title>a webstrate</title>
<script src="{herder_url}/golem/v1/"></script></head>
<body><h1>A webstrate with a golem</h1>
<script type="text/plain" class="golem">{golem_code}</script>
</body></html>""".encode()


class WebstratesServer:
    """A stand-in for the webstrates server: the same page for every /<id>/."""

    def __init__(self, page: bytes, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                body = page if self.path.count("/") == 2 and self.path.endswith("/") else b"not found"
                self.send_response(200 if body is page else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.host = host
        self.port = port or free_port(host)
        self.server = ThreadingHTTPServer((host, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.headers.get_content_type(), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read().decode()


def docker_gateway() -> str:
    """The host's address on Docker's default bridge (docker0)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    if not match:
        pytest.fail("docker0 has no IPv4 address: is the Docker engine running with its default bridge?")
    return match.group(1)


@pytest.mark.parametrize("server, network", [("daphne", "host"), ("herd", "host"), ("daphne", "bridge")])
def test_golem_answers_an_ad_hoc_minion_in_real_chromium(tmp_path, docker_engine, server, network):
    # "host": everything on 127.0.0.1, the golem on the host's network. "bridge": the
    # herder and the webstrates server on docker0's address, the golem on the default
    # bridge reaching the webstrates server as host.docker.internal.
    host = "127.0.0.1" if network == "host" else docker_gateway()
    herder_port = free_port(host)
    herder_url = f"http://{host}:{herder_port}"
    # Another server on the loopback network, by IP address: the golem must not reach it.
    other = WebstratesServer(b"", host="127.0.0.2")
    page_port = free_port(host)
    leak_url = f"http://localhost:{page_port}"
    webstrates = WebstratesServer(webstrate_page(herder_url, other.url, leak_url), host=host, port=page_port)
    golem_sees = webstrates.url if network == "host" else f"http://host.docker.internal:{page_port}"
    webstrate = webstrate_id(f"e2e-{server}-{network}")
    env = herder_env(tmp_path, HERDER_PUBLIC_URL=herder_url, HERDER_WEBSTRATES_URL=golem_sees)
    migrate(env)
    herder = Herder(env=env, host=host, log=tmp_path / "herder.log", port=herder_port, herd=server == "herd")
    try:
        status, kind, container_id = get(f"{herder_url}/golem/v1/spawn/{webstrate}")
        assert (status, kind) == (200, "text/plain"), container_id
        containers = docker_engine.list(kind="golem", owner=webstrate)
        assert [c.handle.id for c in containers] == [container_id.strip()]
        # The DevTools port is published nowhere.
        assert docker_engine.published_ports(containers[0].handle) == {}
        # A repeat answers the same golem.
        assert get(f"{herder_url}/golem/v1/spawn/{webstrate}")[2] == container_id

        deadline = time.monotonic() + 60
        while True:
            with connect(f"{herder.ws}/minion/v1/connect/{webstrate}?type=python") as minion:
                first = json.loads(minion.recv(timeout=30))
                if first == {"Event": "golem-connected"}:
                    minion.send("hello")
                    assert minion.recv(timeout=10) == "HELLO"
                    minion.send("twice, in order")
                    assert minion.recv(timeout=10) == "TWICE, IN ORDER"
                    break
            assert first["Event"] == "golem-not-found"
            assert time.monotonic() < deadline, "the golem never connected"
        assert f"/{webstrate}/" in webstrates.requests
        assert "/allowed" in webstrates.requests and "/leak" not in webstrates.requests
        assert other.requests == []

        status, kind, body = get(f"{herder_url}/golem/v1/kill/{webstrate}")
        assert (status, body.strip()) == (200, "ok")
        assert docker_engine.list(kind="golem", owner=webstrate) == []
    finally:
        for info in get_runtime().list(kind="golem", owner=webstrate):
            print(b"".join(get_runtime().logs(info.handle)).decode(errors="replace")[-3000:])
            get_runtime().remove(info.handle)
        herder.stop()
        webstrates.close()
        other.close()
        print(herder.output())
