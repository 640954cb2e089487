"""`manage.py herd` as a real server process: runs end on every path."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from herder.runtime import get_runtime

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["uvicorn", "daphne"])
def herd(request, tmp_path, docker_engine):
    """`herd` on each ASGI server it supports."""
    env = {**os.environ, "HERDER_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "herder.settings"}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port), "--server", request.param],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
            time.sleep(0.1)
    process.port = port
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def raw_spawn(port: int, program: str, webstrate: str) -> socket.socket:
    """Start a spawn request and return the open socket without reading the answer."""
    body = urllib.parse.urlencode({"env": "python", "main.py": program}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /minion/v1/spawn HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Referer: http://webstrates.test/{webstrate}/\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def minions_of(webstrate: str) -> list:
    return get_runtime().list(kind="minion", owner=webstrate)


def test_a_run_through_the_real_server(herd):
    sock = raw_spawn(herd.port, "print('over http')", "herder-test-served")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["StdOut"] == "over http\n"


def test_a_client_that_disconnects_ends_its_run(herd):
    sock = raw_spawn(herd.port, "import time; time.sleep(60)", "herder-test-gone")
    assert wait_for(lambda: minions_of("herder-test-gone")), "the run never started"

    sock.close()

    # Far sooner than the 30 s time limit.
    assert wait_for(lambda: not minions_of("herder-test-gone"), seconds=8)


def test_stopping_the_herder_ends_runs_in_progress(herd):
    sock = raw_spawn(herd.port, "import time; time.sleep(60)", "herder-test-stop")
    assert wait_for(lambda: minions_of("herder-test-stop")), "the run never started"

    herd.send_signal(signal.SIGTERM)

    assert wait_for(lambda: not minions_of("herder-test-stop"), seconds=8)
    assert herd.wait(timeout=20) is not None
    sock.close()
