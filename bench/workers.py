"""`herd --workers 2` beside `herd --workers 1`, in one run, on the same
PostgreSQL and Redis (so only the number of processes differs):

- minion runs/s: 4 clients looping on POST /minion/v1/spawn (warm pools, one per worker);
- proxy requests/s: wrk GET /hello through /daemon/v1/proxy/ to a daemon-echo
  daemon (and the daemon reached directly, the ceiling);
- relay round trip: an ad-hoc minion and its golem socket echoing, each pair's
  p50, in a herd of its own; with two workers, pairs whose two sockets landed on
  one worker and pairs split over both (told apart by `ss`), until there are
  `--pairs` of each; and split pairs with the link between workers off
  (HERDER_RELAY_LINK=false), through Redis as between hosts (`--relay-only`
  measures only the relay).

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
import re
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


def server_pid(server_port: int, client_port: int) -> int:
    """The herder process holding the server side of our connection from `client_port`
    (which worker accepted it), from `ss`."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{server_port} and dport = :{client_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"pid=(\d+)", out)
    if found is None:
        raise RuntimeError(f"no process holds the connection from port {client_port}: {out!r}")
    return int(found.group(1))


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of these processes' main threads so far, where their event
    loops relay (contention does not inflate it; the supervisor's threads, which list
    the engine's containers every few seconds, are left out)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def workers_of(herd: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{herd}/task/{herd}/children").read_text().split()]


async def relay_rtt(
    port: int, want: dict[str, int], count: int, *, workers: list[int]
) -> list[tuple[str, float, float]]:
    """(kind, p50 round trip in ms, the workers' CPU per round trip in us) of each
    pair: "same" when the minion's socket and the golem's socket to it landed on one
    worker, "split" when on two. Pairs are opened until `want` of each kind were
    measured (at most 8 x as many), as the kernel hands connections to whichever
    worker accepts first; a pair of a kind not wanted (any more) is closed unmeasured."""
    base = f"ws://127.0.0.1:{port}"
    results: list[tuple[str, float, float]] = []
    for _ in range(8 * sum(want.values())):
        kinds = [kind for kind, *_ in results]
        if all(kinds.count(kind) >= n for kind, n in want.items()):
            break
        webstrate = f"bench-{uuid.uuid4().hex[:8]}"
        async with (
            connect(f"{base}/golem/v1/connect/{webstrate}") as control,
            connect(f"{base}/minion/v1/connect/{webstrate}?type=bench") as minion,
        ):
            event = json.loads(await control.recv())
            async with connect(f"{base}/golem/v1/connect-to/{webstrate}/{event['ID']}") as golem:
                assert json.loads(await minion.recv()) == {"Event": "golem-connected"}
                pids = {server_pid(port, ws.local_address[1]) for ws in (minion, golem)}
                kind = "same" if len(pids) == 1 else "split"
                if kinds.count(kind) >= want.get(kind, 0):
                    continue

                async def echo():
                    for _ in range(count):
                        await golem.send(await golem.recv())

                echoing = asyncio.create_task(echo())
                samples = []
                cpu = cpu_seconds(workers)
                for i in range(count):
                    started = time.perf_counter()
                    await minion.send(f"ping {i}")
                    await minion.recv()
                    samples.append(time.perf_counter() - started)
                cpu = cpu_seconds(workers) - cpu
                await echoing
                results.append((kind, statistics.median(samples) * 1000, cpu / count * 1e6))
    return results


def measure_relay(workers: int, env: dict[str, str], args, *, link: bool = True) -> list[tuple[str, float, float]]:
    """The relay in a herd of its own (nothing else running in it). Without `link`,
    workers relay through Redis, as herders on two hosts do: split pairs only."""
    port = free_port()
    herd = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env={**env, "HERDER_RELAY_LINK": "true" if link else "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/api/schema/")
        time.sleep(2)  # every worker up
        pids = workers_of(herd.pid) if workers > 1 else [herd.pid]
        if workers == 1:
            want = {"same": args.pairs}
        else:
            want = {"same": args.pairs, "split": args.pairs} if link else {"split": args.pairs}
        return asyncio.run(relay_rtt(port, want, args.round_trips, workers=pids))
    finally:
        herd.send_signal(signal.SIGTERM)
        herd.wait(timeout=60)


def print_relay(relay: dict, workers: int) -> None:
    """The relay figures beside issue 12's target: within 10 % of one process."""

    def p50(values: list[float], digits: int = 3) -> str:
        return f"{statistics.median(values):8.{digits}f}" if values else "     n/a"

    def line(label: str, rows: list[tuple[str, float, float]], tail: str = "") -> None:
        rtt, cpu = [r[1] for r in rows], [r[2] for r in rows]
        print(f"    {label:<34}{p50(rtt)} ms  {p50(cpu, 0)} us CPU  ({len(rows)} pairs){tail}")

    one, many = relay[1], relay[workers]
    ratio = statistics.median([r[1] for r in many]) / statistics.median([r[1] for r in one])
    print("  relay round trip p50 (median of each pair's p50; the workers' event-loop CPU per round trip)")
    line("1 worker", one)
    line(f"{workers} workers, same-worker pairs", [r for r in many if r[0] == "same"])
    line(f"{workers} workers, split pairs", [r for r in many if r[0] == "split"])
    line(
        f"{workers} workers, all pairs",
        many,
        f"  x{ratio:.2f}; target <= x1.10: {'met' if ratio <= 1.10 else 'missed'}",
    )
    line(f"{workers} workers, split, through Redis", relay["redis"], "  (HERDER_RELAY_LINK=false: as across hosts)")
    print(
        f"    each pair's p50, ms: 1 worker {' '.join(f'{r[1]:.2f}' for r in one)}; {workers} workers "
        + " ".join(f"{r[1]:.2f}{'s' if r[0] == 'split' else ''}" for r in many)
        + " (s: split over two workers)"
    )


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
    parser.add_argument("--relay-only", action="store_true", help="only the relay round trip")
    args = parser.parse_args()
    if not args.relay_only and shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)

    database = f"herder_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    redis.Redis.from_url(REDIS).flushdb()
    results, relay = {}, {}
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
                if not args.relay_only:
                    results[workers] = measure(workers, env, token, args)
                relay[workers] = measure_relay(workers, env, args)
            relay["redis"] = measure_relay(args.workers, env, args, link=False)
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    print(f"herd --workers 1 vs --workers {args.workers} ({os.cpu_count()} cores; PostgreSQL, Redis)")
    print_relay(relay, args.workers)
    if args.relay_only:
        return
    one, many = results[1], results[args.workers]
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


if __name__ == "__main__":
    main()
