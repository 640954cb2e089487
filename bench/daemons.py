"""The daemon reverse proxy beside the daemon reached directly, in one run.

Starts `manage.py herd` on a free loopback port (its own data folder), mints a
token, spawns a daemon-echo daemon, then measures with wrk (Debian's package;
installed when missing) GET /hello through /daemon/v1/proxy/... and straight to
the daemon's published port: requests/s and p50/p99 latency with 10
connections, and their ratio. Then WebSocket round trips through the proxy and
directly.

    .venv/bin/python bench/daemons.py [--seconds 10] [--connections 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def wrk(url: str, seconds: int, connections: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def millis(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": millis("50%"),
        "p99": millis("99%"),
        "errors": int(errors.group(1)) if errors else 0,
    }


async def round_trips(url: str, count: int) -> list[float]:
    async with websockets.connect(url) as ws:
        samples = []
        for i in range(count):
            started = time.perf_counter()
            await ws.send(f"m{i}")
            await ws.recv()
            samples.append(time.perf_counter() - started)
        return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)

    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "HERDER_DATA_DIR": data_dir,
            "HERDER_DAEMON_IMAGES": "herder/daemon-echo:latest",
            "HERDER_MINION_POOL_SIZE": "0",
        }
        env.pop("DATABASE_URL", None)
        run = lambda *cmd: (  # noqa: E731
            subprocess.run(
                [sys.executable, "manage.py", *cmd],
                cwd=ROOT,
                env=env,  # noqa: E731
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        run("migrate", "-v", "0")
        token = run("mint_token", "-e", "bench@herder.test", "-c", "1000000").strip().splitlines()[-1]
        port = free_port()
        herd = subprocess.Popen(
            [sys.executable, "manage.py", "herd", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{base}/api/schema/")
            body = urllib.parse.urlencode(
                {"name": "bench", "image": "herder/daemon-echo:latest", "ports": "[8080]"}
            ).encode()
            request = urllib.request.Request(
                f"{base}/daemon/v1/spawn", data=body, headers={"Authorization": f"Bearer {token}"}
            )
            answer = json.load(urllib.request.urlopen(request, timeout=60))
            direct = f"http://127.0.0.1:{answer['Ports']['8080']}"
            proxied = f"{base}{answer['ProxyURL'].rstrip('/')}"
            wait_for(f"{direct}/hello")
            wait_for(f"{proxied}/hello")

            through = wrk(f"{proxied}/hello", args.seconds, args.connections)
            straight = wrk(f"{direct}/hello", args.seconds, args.connections)
            ws_through = asyncio.run(round_trips(f"ws://127.0.0.1:{port}{answer['ProxyURL']}ws", args.round_trips))
            ws_straight = asyncio.run(round_trips(f"ws://127.0.0.1:{answer['Ports']['8080']}/ws", args.round_trips))

            kill = urllib.request.Request(
                f"{base}/daemon/v1/kill/bench?wipe=true", headers={"Authorization": f"Bearer {token}"}
            )
            urllib.request.urlopen(kill, timeout=30).read()
        finally:
            herd.send_signal(signal.SIGTERM)
            herd.wait(timeout=30)

    print(f"GET /hello, {args.connections} connections, {args.seconds} s each (wrk)")
    for label, figures in (("through the proxy", through), ("daemon directly", straight)):
        print(
            f"  {label:18} {figures['rps']:8.0f} req/s  p50 {figures['p50']:6.2f} ms  "
            f"p99 {figures['p99']:6.2f} ms  non-2xx {figures['errors']}"
        )
    print(
        f"  proxy / direct: p50 latency x{through['p50'] / straight['p50']:.2f}, "
        f"throughput x{through['rps'] / straight['rps']:.2f}"
    )
    print(f"WebSocket round trips, {args.round_trips} sequential small messages")
    for label, samples in (("through the proxy", ws_through), ("daemon directly", ws_straight)):
        ordered = sorted(samples)
        print(
            f"  {label:18} p50 {statistics.median(ordered) * 1000:6.3f} ms  "
            f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:6.3f} ms"
        )


if __name__ == "__main__":
    main()
