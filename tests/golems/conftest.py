"""Fixtures for golem and pairing tests: live herder processes and clean-up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from herder.runtime import get_runtime
from tests.conftest import remove_leftovers

ROOT = Path(__file__).resolve().parents[2]
# Webstrate ids of this test session: other herders (and test runs) may share the engine.
SESSION = f"t{uuid.uuid4().hex[:8]}"


def webstrate_id(name: str) -> str:
    return f"{SESSION}-{name}"


@pytest.fixture(autouse=True)
def _docker_tests_leave_no_golem(request):
    """Every Docker test must leave no golem container of this session behind."""
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    request.getfixturevalue("docker_engine")
    yield
    # Golems of herder processes the tests start carry those herders' instance
    # label: this run's are told by their webstrate ids instead.
    left = remove_leftovers([c for c in get_runtime().list(kind="golem") if c.owner.startswith(SESSION)])
    assert not left, f"golem containers left behind: {left}"


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own in-memory layer (its queues belong to one event loop)."""
    from channels.layers import channel_layers

    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, *, process: subprocess.Popen, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


class Herder:
    """A herder process (Daphne) on a free loopback port."""

    def __init__(
        self, *, env: dict[str, str], host: str = "127.0.0.1", log: Path, port: int | None = None, herd: bool = False
    ) -> None:
        """Daphne alone, or with `herd` the whole herder (`manage.py herd`: its
        default server and the supervisor)."""
        self.host = host
        self.port = port or free_port(host)
        self.log = log
        self._log_file = open(log, "wb")
        if herd:
            command = [sys.executable, "manage.py", "herd", "--host", host, "--port", str(self.port)]
        else:
            command = [
                str(ROOT / ".venv" / "bin" / "daphne"),
                "-b",
                host,
                "-p",
                str(self.port),
                "herder.asgi:application",
            ]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        wait_for_port(host, self.port, process=self.process)

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def herder_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a herder process with its own data folder (SQLite file)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        HERDER_DATA_DIR=str(data_dir),
        HERDER_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        # tests/golems/test_admission.py checks the webstrates server's answer.
        HERDER_GOLEM_CHECK_EXISTS="false",
    )
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
