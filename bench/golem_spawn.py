"""Minion runs while golems start: does a golem spawn hold up every other writer?

Starts `manage.py herd` (SQLite, the warm minion pool) on a free loopback port
with its own data folder, measures python hello-world minion runs one after
another (p50, p90, max), then again while `--golems` golem spawns run
`--concurrency` at a time, then kills the golems. Meanwhile a thread takes
SQLite's write lock on the herder's database every 10 ms (BEGIN IMMEDIATE,
ROLLBACK) and times how long it waited: what every other writer (a minion run
recording itself) waits, apart from the CPU the starts take. Golems open a page
nobody serves (Chromium idles on its error page); nothing leaves the machine.

    .venv/bin/python bench/golem_spawn.py [--golems 8] [--concurrency 4] [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("herd exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("herd did not listen")


def get(url: str, data: bytes | None = None) -> None:
    with urllib.request.urlopen(url, data=data, timeout=120) as answer:
        answer.read()


def minion_ms(base: str) -> float:
    body = urllib.parse.urlencode({"env": "python", "main.py": "print('hello')"}).encode()
    started = time.perf_counter()
    get(f"{base}/minion/v1/spawn", body)
    return (time.perf_counter() - started) * 1000


def figures(samples: list[float]) -> str:
    samples = sorted(samples)
    p90 = samples[int(0.9 * (len(samples) - 1))]
    return f"p50 {statistics.median(samples):6.1f} ms  p90 {p90:6.1f} ms  max {samples[-1]:6.1f} ms  (n={len(samples)})"


def lock_waits(path: str, stop: threading.Event, into: list[float]) -> None:
    """Time taking the database's write lock, every 10 ms until `stop`."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    while not stop.is_set():
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        into.append((time.perf_counter() - started) * 1000)
        db.execute("ROLLBACK")
        time.sleep(0.01)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golems", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="herder-test-bench-") as data:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(
            HERDER_DATA_DIR=data,
            HERDER_LOG_LEVEL="WARNING",
            HERDER_INSTANCE=f"herder-test-bench-{tag}",
            HERDER_GOLEM_WEBSTRATES_URL="http://127.0.0.1:9",
            HERDER_GOLEM_CHECK_EXISTS="false",
            HERDER_GOLEM_SPAWN_RATE="",
            HERDER_GOLEM_MAX=str(args.golems + 1),
        )
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        herd = subprocess.Popen(
            [sys.executable, "manage.py", "herd", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        webstrates = [f"bench-{tag}-{n}" for n in range(args.golems)]
        try:
            wait_for(port, herd)
            for _ in range(5):
                minion_ms(base)  # warm the pool
            database = str(Path(data) / "herder.sqlite3")
            quiet_waits: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=lock_waits, args=(database, stop, quiet_waits))
            sampler.start()
            quiet = [minion_ms(base) for _ in range(args.runs)]
            stop.set()
            sampler.join()

            spawning = threading.Event()
            spawned: list[float] = []

            def spawn(webstrate: str) -> None:
                started = time.perf_counter()
                get(f"{base}/golem/v1/spawn/{webstrate}")
                spawned.append(time.perf_counter() - started)

            def spawn_all() -> None:
                with ThreadPoolExecutor(args.concurrency) as pool:
                    list(pool.map(spawn, webstrates))
                spawning.set()

            busy_waits: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=lock_waits, args=(database, stop, busy_waits))
            sampler.start()
            threading.Thread(target=spawn_all).start()
            busy = []
            while not spawning.is_set():
                busy.append(minion_ms(base))
            stop.set()
            sampler.join()
            print(f"minion runs, quiet:                {figures(quiet)}")
            print(f"minion runs, while golems start:   {figures(busy)}")
            print(f"write-lock waits, quiet:           {figures(quiet_waits)}")
            print(f"write-lock waits, golems starting: {figures(busy_waits)}")
            print(
                f"golem spawns ({args.golems}, {args.concurrency} at a time): "
                f"median {statistics.median(spawned):.2f} s, max {max(spawned):.2f} s"
            )
        finally:
            for webstrate in webstrates:
                try:
                    get(f"{base}/golem/v1/kill/{webstrate}")
                except Exception:
                    pass
            herd.terminate()
            herd.wait(30)


if __name__ == "__main__":
    main()
