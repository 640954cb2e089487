"""Controlled-minion latency and throughput, beside the engine's own floor.

Starts `manage.py herd` on a free loopback port (its own data folder), then:
  - 20 sequential python hello-world runs through the HTTP API: p50/p95/max,
    with the warm pool (a pause between runs lets it refill) and cold;
  - runs per second at concurrency 4, warm (containers reused) and cold (one per run);
  - the same sustained for --sustain seconds: runs/s, errors, containers left over;
  - the floor, in the same run: a bare `docker run --rm` of the same image with
    the same sandbox options, sequential and at concurrency 4.

    .venv/bin/python bench/minions.py [--runs 20] [--concurrent-runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "herder/minion-python:latest"
DOCKER_RUN = [
    "docker",
    "run",
    "--rm",
    "--network",
    "none",
    "--read-only",
    "--init",
    "--tmpfs",
    "/minion:rw,exec,size=256m,uid=65534,gid=65534",
    "--tmpfs",
    "/tmp:rw,exec,size=64m",
    "--memory",
    "512m",
    "--memory-swap",
    "512m",
    "--cpus",
    "1",
    "--pids-limit",
    "256",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--user",
    "65534:65534",
    "--log-driver",
    "none",
    IMAGE,
    "python3",
    "-c",
    "print('hello')",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_herd(data_dir: str, pool_size: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "HERDER_DATA_DIR": data_dir, "HERDER_MINION_POOL_SIZE": str(pool_size)}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("herd did not start")


def spawn(port: int, pause: float = 0) -> float:
    time.sleep(pause)
    body = urllib.parse.urlencode({"env": "python", "main.py": "print('hello')"}).encode()
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/minion/v1/spawn", data=body, timeout=60) as answer:
        result = json.load(answer)
    elapsed = time.perf_counter() - started
    if result["StdOut"] != "hello\n" or result["ExitCode"] != 0:
        raise RuntimeError(f"bad run: {result}")
    return elapsed


def docker_run() -> float:
    started = time.perf_counter()
    out = subprocess.run(DOCKER_RUN, capture_output=True, check=True).stdout
    elapsed = time.perf_counter() - started
    if out != b"hello\n":
        raise RuntimeError(f"bad docker run: {out!r}")
    return elapsed


def sequential(fn, runs: int) -> list[float]:
    fn()  # warm up caches once
    return [fn() for _ in range(runs)]


def concurrent(fn, runs: int, workers: int = 4) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: fn(), range(runs)))
    return runs / (time.perf_counter() - started)


def sustained(fn, seconds: float, workers: int = 4) -> tuple[int, int, float]:
    """Runs, errors and runs per second of `workers` clients looping for `seconds`."""
    deadline = time.perf_counter() + seconds
    counts = {"runs": 0, "errors": 0}

    def loop():
        while time.perf_counter() < deadline:
            try:
                fn()
                counts["runs"] += 1
            except Exception as exc:
                counts["errors"] += 1
                if counts["errors"] <= 3:
                    detail = exc.read()[:300] if hasattr(exc, "read") else ""
                    print(f"  error: {exc!r} {detail!r}", file=sys.stderr)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(workers):
            pool.submit(loop)
    return counts["runs"], counts["errors"], counts["runs"] / (time.perf_counter() - started)


def leaked_minions() -> int:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=herder.kind=minion"], capture_output=True, text=True, check=True
    ).stdout
    return len(out.split())


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  max {ordered[-1] * 1000:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--concurrent-runs", type=int, default=40)
    parser.add_argument("--pool-size", type=int, default=4, help="warm containers per env")
    parser.add_argument("--sustain", type=int, default=60, help="seconds of the sustained run (0: none)")
    args = parser.parse_args()

    results, soaks = {}, {}
    for label, pool_size in (("warm", args.pool_size), ("cold", 0)):
        with tempfile.TemporaryDirectory() as data_dir:
            process, port = start_herd(data_dir, pool_size)
            try:
                # Sequential runs leave the pool time to refill between runs.
                pause = 0.3 if pool_size else 0
                results[label] = (
                    sequential(lambda port=port, pause=pause: spawn(port, pause=pause), args.runs),
                    concurrent(lambda port=port: spawn(port), args.concurrent_runs),
                )
                if args.sustain:
                    soaks[label] = sustained(lambda port=port: spawn(port), args.sustain)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        time.sleep(3)  # retired containers remove themselves
        if args.sustain:
            soaks[label] += (leaked_minions(),)
    floor_seq = sequential(docker_run, args.runs)
    floor_rate = concurrent(docker_run, args.concurrent_runs)

    print(f"python hello world, {args.runs} sequential runs through the HTTP API")
    for label, (seq, _) in results.items():
        print(f"  herder {label:4}       {summary(seq)}")
    print(f"  docker run --rm   {summary(floor_seq)}   (floor)")
    cold = statistics.median(results["cold"][0])
    print(f"  cold / floor p50: {cold / statistics.median(floor_seq):.2f}")
    print(f"concurrency 4, {args.concurrent_runs} runs")
    for label, (_, rate) in results.items():
        print(f"  herder {label:4}       {rate:5.1f} runs/s")
    print(f"  docker run --rm   {floor_rate:5.1f} runs/s   (floor)")
    for label, (runs, errors, rate, leaked) in soaks.items():
        print(
            f"sustained {args.sustain} s at concurrency 4, {label}: {rate:5.1f} runs/s, {runs} runs, "
            f"{errors} errors, {leaked} minion containers left after herd stopped"
        )


if __name__ == "__main__":
    main()
