"""`herd --workers 2` beside `herd --workers 1`, in one run, on the same
PostgreSQL and Redis (so only the number of processes differs):

- minion runs/s: 4 clients looping on POST /minion/v1/spawn (warm pools, one per worker);
- proxy requests/s: wrk GET /hello through /daemon/v1/proxy/ to a daemon-echo
  daemon (and the daemon reached directly, the ceiling);
- relay round trip: an ad-hoc minion and its golem socket echoing, p50 over a
  few pairs (with two workers a pair may span them and go through Redis).

    .venv/bin/python bench/workers.py [--seconds 8] [--connections 20] [--workers 2]

Needs PostgreSQL (HERDER_BENCH_POSTGRES_URL, default the machine's) where it
creates and drops a database of its own, and Redis (HERDER_BENCH_REDIS_URL,
default redis://127.0.0.1:6379/13, a database it flushes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import redis
from websockets.asyncio.client import connect


def _bench_daemons():
    """bench/daemons.py's helpers (free_port, wait_for, wrk); loaded by path, as
    its name is the daemons app's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_daemons", Path(__file__).resolve().parent / "daemons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


free_port, wait_for, wrk = (getattr(_bench_daemons(), name) for name in ("free_port", "wait_for", "wrk"))

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("HERDER_BENCH_POSTGRES_URL", "postgres://herder:herder@127.0.0.1:5432/postgres")
REDIS = os.environ.get("HERDER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
ECHO = "herder/daemon-echo:latest"


def spawn(port: int) -> None:
    body = urllib.parse.urlencode({"env": "python", "main.py": "print('hello')"}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/minion/v1/spawn", data=body, timeout=60) as answer:
        result = json.load(answer)
    if result["StdOut"] != "hello\n":
        raise RuntimeError(f"bad run: {result}")


def runs_per_second(port: int, seconds: float, clients: int = 4) -> tuple[float, int]:
    for _ in range(2 * clients):
        spawn(port)  # fill the warm pools first
    deadline = time.perf_counter() + seconds
    counts = {"runs": 0, "errors": 0}

    def loop():
        while time.perf_counter() < deadline:
            try:
                spawn(port)
                counts["runs"] += 1
            except Exception:
                counts["errors"] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(loop)
    return counts["runs"] / (time.perf_counter() - started), counts["errors"]


async def relay_rtt(port: int, pairs: int, count: int) -> list[float]:
    """Each pair's p50 round trip (ms), sorted."""
    base = f"ws://127.0.0.1:{port}"
    medians = []
    for _ in range(pairs):
        webstrate = f"bench-{uuid.uuid4().hex[:8]}"
        async with (
            connect(f"{base}/golem/v1/connect/{webstrate}") as control,
            connect(f"{base}/minion/v1/connect/{webstrate}?type=bench") as minion,
        ):
            event = json.loads(await control.recv())
            async with connect(f"{base}/golem/v1/connect-to/{webstrate}/{event['ID']}") as golem:
                assert json.loads(await minion.recv()) == {"Event": "golem-connected"}

                async def echo():
                    for _ in range(count):
                        await golem.send(await golem.recv())

                echoing = asyncio.create_task(echo())
                samples = []
                for i in range(count):
                    started = time.perf_counter()
                    await minion.send(f"ping {i}")
                    await minion.recv()
                    samples.append(time.perf_counter() - started)
                await echoing
                medians.append(statistics.median(samples))
    return sorted(m * 1000 for m in medians)


def measure(workers: int, env: dict[str, str], token: str, args) -> dict:
    port = free_port()
    herd = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/api/schema/")
        time.sleep(2)  # every worker up
        body = urllib.parse.urlencode({"name": f"bench{workers}", "image": ECHO, "ports": "[8080]"}).encode()
        request = urllib.request.Request(
            f"{base}/daemon/v1/spawn", data=body, headers={"Authorization": f"Bearer {token}"}
        )
        answer = json.load(urllib.request.urlopen(request, timeout=60))
        direct = f"http://127.0.0.1:{answer['Ports']['8080']}/hello"
        proxied = f"{base}{answer['ProxyURL'].rstrip('/')}/hello"
        wait_for(direct)
        wait_for(proxied)
        figures = {
            "runs": runs_per_second(port, args.seconds),
            "proxy": wrk(proxied, args.seconds, args.connections),
            "direct": wrk(direct, args.seconds, args.connections),
            "rtt": asyncio.run(relay_rtt(port, args.pairs, args.round_trips)),
        }
        kill = urllib.request.Request(
            f"{base}/daemon/v1/kill/bench{workers}?wipe=true", headers={"Authorization": f"Bearer {token}"}
        )
        urllib.request.urlopen(kill, timeout=30).read()
        return figures
    finally:
        herd.send_signal(signal.SIGTERM)
        herd.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--round-trips", type=int, default=500)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)

    database = f"herder_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    redis.Redis.from_url(REDIS).flushdb()
    results = {}
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            env = {k: v for k, v in os.environ.items() if not k.startswith("HERDER_")}
            env.update(
                HERDER_DATA_DIR=data_dir,
                HERDER_DAEMON_IMAGES=ECHO,
                REDIS_URL=REDIS,
                DATABASE_URL=POSTGRES.rsplit("/", 1)[0] + f"/{database}",
                HERDER_LOG_LEVEL="WARNING",
            )
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
            token = run("mint_token", "-e", "bench@herder.test", "-c", "100000000").strip().splitlines()[-1]
            for workers in (1, args.workers):
                results[workers] = measure(workers, env, token, args)
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    one, many = results[1], results[args.workers]
    print(f"herd --workers 1 vs --workers {args.workers} ({os.cpu_count()} cores; PostgreSQL, Redis)")
    print(
        f"  minion runs/s (4 clients)   {one['runs'][0]:8.1f}  {many['runs'][0]:8.1f}  "
        f"x{many['runs'][0] / one['runs'][0]:.2f}   errors {one['runs'][1]}/{many['runs'][1]}"
    )
    print(
        f"  proxy req/s ({args.connections} conns, wrk) {one['proxy']['rps']:8.0f}  {many['proxy']['rps']:8.0f}  "
        f"x{many['proxy']['rps'] / one['proxy']['rps']:.2f}   "
        f"non-2xx {one['proxy']['errors']}/{many['proxy']['errors']}"
    )
    print(f"  proxy p50 ms                {one['proxy']['p50']:8.2f}  {many['proxy']['p50']:8.2f}")
    print(f"  daemon direct req/s         {one['direct']['rps']:8.0f}  {many['direct']['rps']:8.0f}  (the ceiling)")
    print(
        f"  relay round trip p50 ms     {statistics.median(one['rtt']):8.3f}  {statistics.median(many['rtt']):8.3f}  "
        f"x{statistics.median(many['rtt']) / statistics.median(one['rtt']):.2f}   (median of {args.pairs} pairs)"
    )
    print(
        f"  each pair's p50, ms: 1 worker {' '.join(f'{v:.2f}' for v in one['rtt'])}; "
        f"{args.workers} workers {' '.join(f'{v:.2f}' for v in many['rtt'])} "
        "(a pair split over two workers relays through Redis)"
    )


if __name__ == "__main__":
    main()
