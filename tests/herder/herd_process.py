"""A real `manage.py herd` on a free loopback port, for tests that need the
whole herder (its ASGI layers, its server) rather than Django's test client."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_herd(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen:
    """Migrate the database `env` names, start `herd` with `args` on a free port
    (`process.port`) and wait until it listens. Its output goes to `log`, else
    to a pipe; either is shown if it exits or does not listen within 20 s."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    output = open(log, "w+b") if log is not None else subprocess.PIPE
    process = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port), *args],
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
            if process.poll() is not None or time.monotonic() >= deadline:
                text = log.read_text() if log is not None else process.stdout.read().decode()
                raise AssertionError(f"herd did not start:\n{text}") from None
            time.sleep(0.1)
    process.port = port
    return process
