"""Fixtures for the compatibility tests: a real herder (`manage.py herd` on uvicorn
and on Daphne) and the client programs in Node (`ws`) and Go
(`golang.org/x/net/websocket`) that the tests drive over stdin and stdout.

deploy/test.sh installs what they need: Node and npm (`npm ci` in tests/compat/node),
Debian's golang-go and golang-golang-x-net-dev. A missing one fails the tests, as a
missing Docker engine does.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.golems.conftest import free_port, herder_env, migrate, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Debian's golang-golang-x-net-dev: golang.org/x/net for GOPATH builds, no module proxy.
GOCODE = Path("/usr/share/gocode")
# Short waits, so that golem-not-found and an unknown minion are quick to see.
GOLEM_WAIT = 4.0
REPLY_TIMEOUT = 1.0


def webstrate_id(name: str) -> str:
    return f"compat-{name}-{uuid.uuid4().hex[:8]}"


class Herd:
    """`manage.py herd --server <server>` on a free loopback port, without the
    supervisor (nothing here touches Docker); with `redis_url`, on the Redis channel layer."""

    def __init__(self, server: str, data_dir: Path, *, redis_url: str | None = None) -> None:
        self.server = server
        self.port = free_port()
        extra = {"REDIS_URL": redis_url} if redis_url else {}
        env = herder_env(
            data_dir,
            HERDER_GOLEM_WAIT=str(GOLEM_WAIT),
            HERDER_PAIRING_REPLY_TIMEOUT=str(REPLY_TIMEOUT),
            HERDER_MINION_POOL_SIZE="0",
            **extra,
        )
        migrate(env)
        self.log = data_dir / "herd.log"
        self._log_file = open(self.log, "wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "herd",
                "--server",
                server,
                "--no-supervisor",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port("127.0.0.1", self.port, process=self.process)
        except Exception:
            self.stop()
            raise

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()
        print(f"--- herd on {self.server}\n{self.log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="module", params=["uvicorn", "daphne", "uvicorn+redis"])
def herd(request, tmp_path_factory):
    """The herder on each server; also on Redis, where the paired sockets of one process
    still talk directly while pairing replies go through Redis (they can be overtaken)."""
    server, _, layer = request.param.partition("+")
    redis_url = None
    if layer:
        redis_url = os.environ.get("HERDER_TEST_REDIS_URL")
        if not redis_url:
            pytest.fail(
                "HERDER_TEST_REDIS_URL is not set: start Redis (deploy/start-services.sh) "
                "and export it, as deploy/test.sh does."
            )
    started = Herd(server, tmp_path_factory.mktemp(f"herd-{server}"), redis_url=redis_url)
    yield started
    started.stop()
    # A socket answered out of order (a send before the accept, an accept after an HTTP
    # refusal) fails in the server, not in the client: the herd's log must show none.
    assert "Traceback" not in started.log.read_text(errors="replace")


class Client:
    """A client program: commands go in as JSON lines, what it saw comes out as JSON lines."""

    def __init__(self, command: list[str], *, cwd: Path | None = None) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.seen: list[dict] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def next(self, timeout: float = 10.0) -> dict:
        """What the client saw next; fails when it saw nothing within `timeout`."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.command[0]} said nothing for {timeout} s; it saw {self.seen}")
        if line is None:
            pytest.fail(
                f"{self.command[0]} exited ({self.process.wait()}): "
                f"{self.process.stderr.read().decode(errors='replace')}; it saw {self.seen}"
            )
        self.seen.append(line)
        return line

    def tell(self, **command) -> None:
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()

    def send_text(self, text: str) -> None:
        self.tell(text=text)

    def send_binary(self, data: bytes) -> None:
        self.tell(binary=base64.b64encode(data).decode())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()


class NodeClient(Client):
    """tests/compat/node/client.js: the `ws` package, its defaults."""

    def event(self, timeout: float = 10.0) -> dict:
        """The next text frame, as JSON."""
        seen = self.next(timeout)
        assert "text" in seen, seen
        return json.loads(seen["text"])


class GoClient(Client):
    """tests/compat/go/client.go: x/net/websocket reading 512 bytes at a time, so
    frames reach it as a stream of chunks; `expect` takes bytes off that stream."""

    def __init__(self, command: list[str]) -> None:
        super().__init__(command)
        self.stream = b""
        self.chunks: list[int] = []

    def expect(self, data: bytes, timeout: float = 10.0) -> None:
        while len(self.stream) < len(data):
            seen = self.next(timeout)
            assert "chunk" in seen, (seen, self.stream, data)
            chunk = base64.b64decode(seen["chunk"])
            self.chunks.append(len(chunk))
            self.stream += chunk
        head, self.stream = self.stream[: len(data)], self.stream[len(data) :]
        assert head == data

    def expect_event(self, event: dict, timeout: float = 10.0) -> None:
        # The herder's events are json.dumps of the dict (Python's separators).
        self.expect(json.dumps(event).encode(), timeout)


@pytest.fixture(scope="session")
def node_program() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run deploy/test.sh (installs Debian's nodejs and npm).")
    if not (HERE / "node" / "node_modules" / "ws").is_dir():
        pytest.fail("tests/compat/node has no node_modules: run `npm ci` there (deploy/test.sh does).")
    return [node, str(HERE / "node" / "client.js")]


@pytest.fixture(scope="session")
def go_program(tmp_path_factory) -> list[str]:
    go = shutil.which("go")
    if go is None or not (GOCODE / "src" / "golang.org" / "x" / "net" / "websocket").is_dir():
        pytest.fail(
            "go or golang.org/x/net is missing: run deploy/test.sh "
            "(installs Debian's golang-go and golang-golang-x-net-dev)."
        )
    built = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{built}{os.pathsep}{GOCODE}", "GOFLAGS": ""}
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    subprocess.run(
        [go, "build", "-o", str(built / "client"), str(HERE / "go" / "client.go")], cwd=built, env=env, check=True
    )
    return [str(built / "client")]


@pytest.fixture
def clients():
    """Start client programs; every one is ended after the test."""
    started: list[Client] = []

    def start(kind: type[Client], command: list[str]) -> Client:
        client = kind(command)
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()
