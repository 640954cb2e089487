"""Memory soak: the herder's resident memory across 2,000 minion runs and
10,000 WebSocket connections opened and closed (bounded, loopback only).

Starts `manage.py herd` on a free loopback port (its own data folder, the warm
pool on), warms it up, then samples its RSS (from /proc) as the load goes on.
The figure that matters is the change from after the warm-up to the end.

    .venv/bin/python bench/soak.py [--runs 2000] [--sockets 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def spawn(port: int) -> None:
    body = urllib.parse.urlencode({"env": "python", "main.py": "print('hello')"}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/minion/v1/spawn", data=body, timeout=60) as answer:
        answer.read()


async def open_and_close(port: int, count: int, concurrency: int = 20) -> int:
    """Ad-hoc minion sockets that connect, are accepted, and leave at once."""
    done = 0

    async def client(n: int) -> None:
        nonlocal done
        for i in range(n):
            async with websockets.connect(f"ws://127.0.0.1:{port}/minion/v1/connect/soak-{i % 50}?type=soak"):
                pass
            done += 1

    await asyncio.gather(*(client(count // concurrency) for _ in range(concurrency)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--sockets", type=int, default=10000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "HERDER_DATA_DIR": data_dir, "HERDER_MINION_POOL_SIZE": "4"}
        env.pop("DATABASE_URL", None)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        port = free_port()
        herd = subprocess.Popen(
            [sys.executable, "manage.py", "herd", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/schema/", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            print(f"herd started: {rss_mib(herd.pid):6.1f} MiB")

            warmup = args.runs // 10
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: spawn(port), range(warmup)))
                base = rss_mib(herd.pid)
                print(f"after {warmup} warm-up runs: {base:6.1f} MiB")
                done = warmup
                step = (args.runs - warmup) // 4
                for _ in range(4):
                    list(pool.map(lambda _: spawn(port), range(step)))
                    done += step
                    print(f"after {done} runs: {rss_mib(herd.pid):6.1f} MiB")
            runs_end = rss_mib(herd.pid)

            asyncio.run(open_and_close(port, args.sockets // 10))
            sockets_base = rss_mib(herd.pid)
            print(f"after {args.sockets // 10} warm-up sockets: {sockets_base:6.1f} MiB")
            started = time.perf_counter()
            opened = asyncio.run(open_and_close(port, args.sockets))
            elapsed = time.perf_counter() - started
            sockets_end = rss_mib(herd.pid)
            print(f"after {opened} more sockets ({opened / elapsed:.0f}/s): {sockets_end:6.1f} MiB")
        finally:
            herd.send_signal(signal.SIGTERM)
            herd.wait(timeout=30)

    print(f"minion runs: RSS {base:.1f} -> {runs_end:.1f} MiB ({(runs_end / base - 1) * 100:+.1f} %)")
    print(
        f"sockets:     RSS {sockets_base:.1f} -> {sockets_end:.1f} MiB ({(sockets_end / sockets_base - 1) * 100:+.1f} %)"
    )


if __name__ == "__main__":
    main()
