"""End to end in real Chromium: the herder spawns a golem container for a webstrate
page served by the test; the page's golem code answers a Python ad-hoc minion."""

from __future__ import annotations

import json
import re
import socket
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

# The golem's code: try what it must not reach and report it, then open the
# control socket, accept every minion, answer upper-cased.
GOLEM_CODE = """
var id = herder.webstrateId();
function report(name, result) {
  fetch(location.origin + "/report?" + name + "=" + result).catch(function () {});
}
function probe(name, url) {
  fetch(url, {mode: "no-cors"}).then(function () { report(name, "reached"); },
                                     function () { report(name, "blocked"); });
}
// Only the webstrates server and the herder resolve: "localhost" does not.
fetch(location.origin + "/allowed").catch(function () {});
fetch("__LEAK__/leak").catch(function () {});
fetch("__OTHER__/leak-ip", {mode: "no-cors"}).catch(function () {});
// The herder's public routes are reachable; its admin, other ports of its host
// (another server, Redis, PostgreSQL) are not.
fetch(herder.url + "/golem/v1/ls").then(function (r) { report("ls", r.status); },
                                        function () { report("ls", "blocked"); });
probe("admin", herder.url + "/admin/login/");
probe("port", "__HOST_PORT__/leak-port");
probe("redis", "__HERDER_HOST__:6379/");
probe("postgres", "__HERDER_HOST__:5432/");
// WebRTC would send UDP around the proxy (STUN); the golem's policy forbids it.
var rtc = new RTCPeerConnection({iceServers: [{urls: "stun:__STUN__"}]});
rtc.createDataChannel("probe");
rtc.createOffer().then(function (offer) { return rtc.setLocalDescription(offer); }).catch(function () {});
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


def webstrate_page(herder_url: str, other_url: str, leak_url: str, host_port_url: str, stun: str) -> bytes:
    herder_host = herder_url.rsplit(":", 1)[0]
    golem_code = (
        GOLEM_CODE.replace("__OTHER__", other_url)
        .replace("__LEAK__", leak_url)
        .replace("__HOST_PORT__", host_port_url)
        .replace("__HERDER_HOST__", herder_host)
        .replace("__STUN__", stun)
    )
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


def in_golem(container_id: str, command: list[str]) -> tuple[int, str]:
    """Run a command in the golem's container (as its user, under its seccomp profile)."""
    api = get_runtime().client.api
    exec_id = api.exec_create(container_id, command)["Id"]
    output = api.exec_start(exec_id).decode(errors="replace")
    return api.exec_inspect(exec_id)["ExitCode"], output


# Each renderer's NSpid line: more than one pid means its own PID namespace,
# which only Chromium's (namespace) sandbox gives it.
RENDERER_NAMESPACES = r"""
import glob
for status in glob.glob("/proc/[0-9]*/status"):
    try:
        cmdline = open(status[:-6] + "cmdline", "rb").read()
        nspid = [l for l in open(status) if l.startswith("NSpid:")][0].split()[1:]
    except OSError:
        continue
    if cmdline.startswith(b"/usr/lib/chromium/") and b"--type=renderer" in cmdline:
        print(len(nspid))
"""
CHROMIUM_ENVIRONMENTS = r"""
import glob
for environ in glob.glob("/proc/[0-9]*/environ"):
    try:
        if open(environ[:-7] + "cmdline", "rb").read().startswith(b"/usr/lib/chromium/"):
            print(open(environ, "rb").read().decode(errors="replace"))
    except OSError:
        pass
"""
# ptrace(PTRACE_TRACEME): Docker's default profile allows it, the golem's does not.
PTRACE = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); print(libc.syscall(101, 0, 0, 0, 0))"
# A new user namespace (Chromium's sandbox needs it), then a mount namespace in it:
# the kernel would allow that, the golem's profile does not (EPERM).
NAMESPACES = (
    "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
    "print(libc.unshare(0x10000000), libc.unshare(0x00020000), ctypes.get_errno())"
)


def frames_until_close(url: str) -> list:
    """Every frame a control socket gets until it is closed, and its close code last."""
    from websockets.exceptions import ConnectionClosed

    frames = []
    with connect(url) as socket:
        try:
            while True:
                frames.append(json.loads(socket.recv(timeout=60)))
        except ConnectionClosed as closed:
            frames.append(closed.rcvd.code if closed.rcvd else None)
    return frames


@pytest.mark.parametrize("server, network", [("daphne", "host"), ("herd", "host"), ("daphne", "bridge")])
def test_golem_answers_an_ad_hoc_minion_in_real_chromium(tmp_path, docker_engine, server, network):
    # "host": everything on 127.0.0.1, the golem on the host's network. "bridge": the
    # herder and the webstrates server on docker0's address, the golem on an isolated
    # network of its own (created by the herder) reaching the host's address.
    host = "127.0.0.1" if network == "host" else docker_gateway()
    herder_port = free_port(host)
    herder_url = f"http://{host}:{herder_port}"
    # Another server on the loopback network, by IP address: the golem must not reach it;
    # nor another port of the herder's own host.
    other = WebstratesServer(b"", host="127.0.0.2")
    same_host = WebstratesServer(b"", host=host)
    page_port = free_port(host)
    # With herd, the page is on another site than the herder (localhost and 127.0.0.1):
    # the golem's proof must still travel on its cross-site WebSocket.
    page_host = "localhost" if server == "herd" else host
    leak_url = f"http://{'127.0.0.1' if page_host == 'localhost' else 'localhost'}:{page_port}"
    # A UDP port on the host's docker0 address (loopback STUN is never tried).
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((docker_gateway(), 0))
    udp.settimeout(0.2)
    stun = "%s:%d" % udp.getsockname()
    page = webstrate_page(herder_url, other.url, leak_url, same_host.url, stun)
    webstrates = WebstratesServer(page, host=host, port=page_port)
    webstrate = webstrate_id(f"e2e-{server}-{network}")
    golem_network = f"herder-test-golems-{webstrate}"
    extra = {"HERDER_GOLEM_NETWORK": golem_network} if network == "bridge" else {}
    env = herder_env(
        tmp_path, HERDER_PUBLIC_URL=herder_url, HERDER_WEBSTRATES_URL=f"http://{page_host}:{page_port}", **extra
    )
    migrate(env)
    herder = Herder(env=env, host=host, log=tmp_path / "herder.log", port=herder_port, herd=server == "herd")
    squatter = None
    try:
        # Someone opens the control socket before the golem exists (allowed: no golem container yet).
        squatted: list = []
        squatter = threading.Thread(
            target=lambda: squatted.extend(frames_until_close(f"{herder.ws}/golem/v1/connect/{webstrate}"))
        )
        squatter.start()
        time.sleep(0.5)

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
        # The squatter was closed (4409) and never saw a minion.
        squatter.join(30)
        assert squatted[-1] == 4409 and [f.get("code") for f in squatted[:-1]] == ["golem_connected"], squatted

        assert f"/{webstrate}/" in webstrates.requests
        assert "/allowed" in webstrates.requests and "/leak" not in webstrates.requests
        assert other.requests == [] and same_host.requests == []
        deadline = time.monotonic() + 30
        reports = {}
        while len(reports) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
            reports = dict(p.split("?", 1)[1].split("=", 1) for p in webstrates.requests if p.startswith("/report?"))
        assert reports == {
            "ls": "200",
            "admin": "blocked",
            "port": "blocked",
            "redis": "blocked",
            "postgres": "blocked",
        }
        udp_packets = []
        for _ in range(15):
            try:
                udp_packets.append(udp.recvfrom(2048))
            except socket.timeout:
                pass
        assert udp_packets == []
        logs = b"".join(docker_engine.logs(containers[0].handle)).decode(errors="replace")
        # The proxy refused them (and says so), rather than the servers closing on Chromium.
        for refused in (f"{host}:6379", f"{host}:5432", f"{host}:{same_host.port}", f"{host}:{herder_port}/admin"):
            assert f"refused GET http://{refused}" in logs, logs[-3000:]

        # Chromium's sandbox runs under the golem's seccomp profile (an allow-list).
        assert "No usable sandbox" not in logs
        code, output = in_golem(container_id.strip(), ["python3", "-c", RENDERER_NAMESPACES])
        assert code == 0 and output.split() and all(int(n) > 1 for n in output.split()), output
        assert in_golem(container_id.strip(), ["python3", "-c", PTRACE]) == (0, "-1\n")
        assert in_golem(container_id.strip(), ["python3", "-c", NAMESPACES]) == (0, "0 -1 1\n")
        # Chromium's processes never had the proof in their environment.
        code, output = in_golem(container_id.strip(), ["python3", "-c", CHROMIUM_ENVIRONMENTS])
        assert code == 0 and "HERDER_GOLEM_ALLOW" not in output and "HERDER_GOLEM_PROOF" not in output
        assert "PATH=" in output  # the environments were read

        status, kind, body = get(f"{herder_url}/golem/v1/kill/{webstrate}")
        assert (status, body.strip()) == (200, "ok")
        assert docker_engine.list(kind="golem", owner=webstrate) == []
    finally:
        for info in get_runtime().list(kind="golem", owner=webstrate):
            print(b"".join(get_runtime().logs(info.handle)).decode(errors="replace")[-3000:])
            get_runtime().remove(info.handle)
        herder.stop()
        if squatter is not None:
            squatter.join(5)
        if network == "bridge":
            get_runtime().network_remove(golem_network)
        for server_ in (webstrates, other, same_host):
            server_.close()
        udp.close()
        print(herder.output())
