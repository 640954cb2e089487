"""Ad-hoc minion pairing: one golem and one minion paired through the herder.

For each server (uvicorn, Daphne) and channel layer it starts `herd` processes on free loopback
ports, each with its own data folder, then pairs a golem and a minion (the
three sockets: control, minion, connect-to) and measures:
  - round trip: the minion sends a small text frame, the golem sends it back;
    2,000 of them one after another: p50 and p99;
  - one-way stream: the minion sends 20,000 small frames as fast as it can;
    messages per second until the golem has received the last one.

Layers: the in-memory layer (one process), Redis (one process) and Redis with
the golem and the minion on two processes.

    .venv/bin/python bench/pairing.py [--redis redis://127.0.0.1:6379/0] [--rtt 2000] [--stream 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_herders(count: int, data_dir: str, redis_url: str | None, server: str) -> list[tuple[subprocess.Popen, int]]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(HERDER_DATA_DIR=data_dir, HERDER_LOG_LEVEL="WARNING")
    if redis_url:
        env["REDIS_URL"] = redis_url
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    herders = []
    for _ in range(count):
        port = free_port()
        # Serve only: the bench measures the server and the relay, not the supervisor.
        process = subprocess.Popen(
            [sys.executable, "manage.py", "herd", "--port", str(port), "--server", server, "--no-supervisor"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL,
        )
        herders.append((process, port))
    for _process, port in herders:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit(f"the herder on port {port} did not start")
    return herders


async def measure(golem_port: int, minion_port: int, rtt_count: int, stream_count: int) -> dict:
    webstrate = f"bench-{uuid.uuid4().hex[:8]}"
    golem_base, minion_base = f"ws://127.0.0.1:{golem_port}", f"ws://127.0.0.1:{minion_port}"
    async with (
        connect(f"{golem_base}/golem/v1/connect/{webstrate}") as control,
        connect(f"{minion_base}/minion/v1/connect/{webstrate}?type=bench", max_queue=None) as minion,
    ):
        event = json.loads(await control.recv())
        async with connect(f"{golem_base}/golem/v1/connect-to/{webstrate}/{event['ID']}", max_queue=None) as golem:
            assert json.loads(await minion.recv()) == {"Event": "golem-connected"}

            # Round trips: the golem echoes.
            async def echo():
                for _ in range(rtt_count):
                    await golem.send(await golem.recv())

            echoing = asyncio.create_task(echo())
            rtts = []
            for i in range(rtt_count):
                started = time.perf_counter()
                await minion.send(f"ping {i}")
                assert await minion.recv() == f"ping {i}"
                rtts.append(time.perf_counter() - started)
            await echoing

            # One-way stream.
            async def receive_all():
                for i in range(stream_count):
                    assert await golem.recv() == f"m{i}"
                return time.perf_counter()

            receiving = asyncio.create_task(receive_all())
            started = time.perf_counter()
            for i in range(stream_count):
                await minion.send(f"m{i}")
            finished = await receiving
    rtts.sort()
    return {
        "rtt_p50_ms": statistics.median(rtts) * 1000,
        "rtt_p99_ms": rtts[int(len(rtts) * 0.99) - 1] * 1000,
        "msgs_per_s": stream_count / (finished - started),
    }


def run(label: str, processes: int, redis_url: str | None, args) -> None:
    with tempfile.TemporaryDirectory(prefix="herder-bench-") as data_dir:
        herders = start_herders(processes, data_dir, redis_url, args.server)
        try:
            ports = [port for _, port in herders]
            result = asyncio.run(measure(ports[0], ports[-1], args.rtt, args.stream))
        finally:
            for process, _ in herders:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    print(
        f"{label:<46} RTT p50 {result['rtt_p50_ms']:6.2f} ms   p99 {result['rtt_p99_ms']:6.2f} ms   "
        f"one-way {result['msgs_per_s']:8.0f} msgs/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default=os.environ.get("HERDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--rtt", type=int, default=2000)
    parser.add_argument("--stream", type=int, default=20000)
    parser.add_argument("--servers", default="uvicorn,daphne", help="comma-separated: uvicorn, daphne")
    args = parser.parse_args()
    print(f"one golem and one minion; {args.rtt} round trips, a one-way stream of {args.stream}")
    for server in args.servers.split(","):
        args.server = server
        run(f"{server}, in-memory layer, one process", 1, None, args)
        run(f"{server}, Redis layer, one process", 1, args.redis, args)
        run(f"{server}, Redis layer, golem and minion apart", 2, args.redis, args)


if __name__ == "__main__":
    main()
