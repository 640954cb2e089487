"""The allow-list proxy of the golem image's launcher (deploy/images/golem/golem-start),
run here on the host against real servers: what it forwards and what it refuses."""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import async_to_sync

from tests.golems.conftest import ROOT

_loader = importlib.machinery.SourceFileLoader("golem_start", str(ROOT / "deploy/images/golem/golem-start"))
_spec = importlib.util.spec_from_loader("golem_start", _loader)
golem_start = importlib.util.module_from_spec(_spec)
_loader.exec_module(golem_start)


class Recorder:
    """An HTTP server on 127.0.0.1 that answers its name and records request lines."""

    def __init__(self, name: str) -> None:
        self.lines: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                owner.lines.append(f"{self.command} {self.path} {self.headers.get('Connection')}")
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    allowed, herder, forbidden = Recorder("allowed"), Recorder("herder"), Recorder("forbidden")
    yield allowed, herder, forbidden
    for server in (allowed, herder, forbidden):
        server.close()


async def exchange(proxy_port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(data)
    await writer.drain()
    answer = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            answer += chunk
    except (ConnectionError, asyncio.TimeoutError):
        pass
    writer.close()
    return answer


def run_with_proxy(allowed: set, admin_host, scenario):
    async def main():
        proxy = golem_start.Proxy(allowed, admin_host=admin_host)
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=golem_start.HEAD_LIMIT)
        try:
            return await scenario(server.sockets[0].getsockname()[1])
        finally:
            server.close()

    return async_to_sync(main)()


def test_only_allowed_host_ports_are_forwarded_and_admin_never(servers, capfd):
    allowed, herder, forbidden = servers
    pairs = golem_start.parse_allow(f"127.0.0.1:{allowed.port},LOCALHOST:{herder.port}")
    assert pairs == {("127.0.0.1", allowed.port), ("localhost", herder.port)}

    async def scenario(port):
        get = f"GET http://127.0.0.1:{allowed.port}/page HTTP/1.1\r\nHost: x\r\nProxy-Connection: keep-alive\r\n\r\n"
        answer = await exchange(port, get.encode())
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"allowed")
        assert b"Connection: close" in answer
        # Another port of the same host, an admin path of the herder: closed without an answer.
        for target in (
            f"127.0.0.1:{forbidden.port}/x",
            f"localhost:{herder.port}/admin/login/",
            f"localhost:{herder.port}/ADMIN",
            f"127.0.0.1:{herder.port}/",
        ):
            assert await exchange(port, f"GET http://{target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()) == b""
        # Only http:// in absolute form; CONNECT only to allowed pairs.
        assert await exchange(port, b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        refused = await exchange(port, f"CONNECT 127.0.0.1:{forbidden.port} HTTP/1.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 403")
        tunnel = await exchange(
            port,
            f"CONNECT localhost:{herder.port} HTTP/1.1\r\n\r\n"
            f"GET /golem/v1/ls HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode(),
        )
        assert tunnel.startswith(b"HTTP/1.1 200 Connection established") and tunnel.endswith(b"herder")
        # A second request on a forwarded connection never reaches another host.
        two = (
            f"GET http://127.0.0.1:{allowed.port}/one HTTP/1.1\r\nHost: x\r\n\r\n"
            f"GET http://127.0.0.1:{forbidden.port}/two HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await exchange(port, two.encode())

    run_with_proxy(pairs, ("localhost", herder.port), scenario)
    assert forbidden.lines == []
    assert allowed.lines[0] == "GET /page close"
    assert herder.lines == ["GET /golem/v1/ls close"]
    log = capfd.readouterr().err
    assert f"refused CONNECT 127.0.0.1:{forbidden.port}" in log
    assert f"refused GET http://localhost:{herder.port}/admin..." in log


def test_the_proof_cookie_is_httponly_and_bound_to_the_control_socket_path():
    cookie = golem_start.proof_cookie("wss://herder.example/golem/v1/connect/w1", "s")
    assert cookie == {
        "name": "herder_golem_proof",
        "value": "s",
        "url": "https://herder.example/golem/v1/connect/w1",
        "path": "/golem/v1/connect/w1",
        "httpOnly": True,
        "secure": True,
        "sameSite": "None",
    }
    # Plain http: Secure only where Chromium allows it (loopback), else a same-site cookie.
    assert golem_start.proof_cookie("ws://127.0.0.1:8000/golem/v1/connect/w1", "s")["secure"]
    plain = golem_start.proof_cookie("ws://172.17.0.1:8000/golem/v1/connect/w1", "s")
    assert not plain["secure"] and "sameSite" not in plain and plain["httpOnly"]
