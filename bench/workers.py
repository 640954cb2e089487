"""`herd --workers 2` beside `herd --workers 1`, in one run, on the same
PostgreSQL and Redis (so only the number of processes differs):

- minion runs/s: 4 clients looping on POST /minion/v1/spawn (warm pools, one per worker);
- proxy requests/s: wrk GET /hello through /daemon/v1/proxy/ to a daemon-bench
  daemon (nginx: the proxy is measured, not the daemon), the daemon reached
  directly (the ceiling), and the p50 of both at half of one worker's maximum;
- for each, the CPU seconds each part spent per run or request (the herd's
  processes, the daemon's or the minions' containers, the engine, PostgreSQL,
  wrk or this script's clients), and the bound they set on the ratio: on a
  shared machine requests/s move with everybody's load, CPU per request not;
- relay round trip: an ad-hoc minion and its golem socket echoing, each pair's
  p50, in a herd of its own; with two workers, 2 x `--pairs` pairs as they come,
  each told "same" (both sockets served by one worker, as the handoff makes
  them) or "split" (by `ss`); and split pairs with the link between workers off
  (HERDER_RELAY_LINK=false, so no handoff either), through Redis as between
  hosts (`--relay-only` measures only the relay).

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
import resource
import shutil
import signal
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
# nginx answering /hello (deploy/images/daemon-bench): the proxy, not the daemon, is measured.
DAEMON = "herder/daemon-bench:latest"


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


# --- CPU accounting (the throughput parts) ---------------------------------------------
# On a shared 2-core machine requests/s move with everybody's load; CPU seconds per
# request of each part do not, and they say what a second worker can win: with the
# load generator and the daemon on the same cores, 2 workers reach at best
# 2 * herd / (herd + daemon + load generator) of one worker's rate (one worker
# fills one core; two fill both, shared with the rest).

TICK = os.sysconf("SC_CLK_TCK")
CGROUP = Path("/sys/fs/cgroup")
DOCKER_STATE = Path("/var/lib/docker/containers")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process, 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    """The process and its children, theirs, ... (a herd and its workers)."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found += descendants(int(child))
    return found


def container_cpu(cid: str) -> float | None:
    """CPU seconds of a container's cgroup (v1 cpuacct or v2), None once it is gone."""
    for path, scale in (
        (CGROUP / "cpuacct" / "docker" / cid / "cpuacct.usage", 1e-9),
        (CGROUP / "system.slice" / f"docker-{cid}.scope" / "cpu.stat", 1e-6),
    ):
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.name == "cpu.stat":
            text = text.split()[1]  # usage_usec
        return int(text) * scale
    return None


def labelled_containers(label: str, value: str, known: dict[str, bool]) -> list[str]:
    """Running containers carrying label=value, read from the engine's state
    folder (no engine call: polling the engine would cost the engine CPU)."""
    try:
        ids = [entry.name for entry in DOCKER_STATE.iterdir()]
    except OSError:
        return []
    for cid in ids:
        if cid not in known:
            try:
                config = json.loads((DOCKER_STATE / cid / "config.v2.json").read_text())
                known[cid] = (config["Config"].get("Labels") or {}).get(label) == value
            except (OSError, ValueError, KeyError):
                continue  # being created: looked at again next time
    return [cid for cid in ids if known.get(cid)]


def engine_pids() -> list[int]:
    """dockerd, containerd and the containers' shims (every container's: the
    engine is shared)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name in ("dockerd", "containerd") or name.startswith("containerd-shim"):
                pids.append(int(entry.name))
    return pids


def database_cpu() -> dict[int, float]:
    """CPU seconds of the PostgreSQL server by process: its backends (pooled
    connections live long), and the postmaster with the backends that ended
    (their time is their parent's once they exit). Every client's, not only
    the herder's."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent = Path(f"/proc/{fields[1]}/comm").read_text().strip()
        except OSError:
            continue
        own = fields[11:15] if parent != "postgres" else fields[11:13]
        found[int(entry.name)] = sum(int(value) for value in own) / TICK
    return found


class CpuMeter:
    """CPU seconds spent by each part while a load runs: the herd's processes,
    containers (by id, or by label while they come and go), the engine, and this
    process's children (wrk) and itself (Python clients). Polled from a thread, so
    processes and containers that end during the load keep what they spent up
    to the last poll."""

    def __init__(self, herd: int, *, containers: tuple[str, ...] = (), label: tuple[str, str] | None = None):
        self.herd = herd
        self.fixed = containers
        self.label = label
        self.known: dict[str, bool] = {}
        self.first: dict[str, dict] = {"herd": {}, "containers": {}, "engine": {}, "database": {}}
        self.last: dict[str, dict] = {"herd": {}, "containers": {}, "engine": {}, "database": {}}
        self._stop = threading.Event()

    def _poll(self) -> None:
        seen = {
            "herd": {pid: proc_cpu(pid) for pid in descendants(self.herd)},
            "engine": {pid: proc_cpu(pid) for pid in engine_pids()},
            "database": database_cpu(),
            "containers": {},
        }
        cids = list(self.fixed) + (labelled_containers(*self.label, self.known) if self.label else [])
        for cid in cids:
            used = container_cpu(cid)
            if used is not None:
                seen["containers"][cid] = used
        for pid in set(self.last["database"]) - set(seen["database"]):
            # A backend that ended: its time is the postmaster's now.
            self.first["database"].pop(pid, None)
            self.last["database"].pop(pid, None)
        for part, values in seen.items():
            for key, value in values.items():
                # A process or container first seen mid-load started then: all its CPU counts.
                self.first[part].setdefault(key, 0.0 if self._started else value)
                self.last[part][key] = value

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._poll()

    def __enter__(self) -> CpuMeter:
        self._started = False
        self._poll()
        self._started = True
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._self = time.process_time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children = (children.ru_utime + children.ru_stime) - (self._children.ru_utime + self._children.ru_stime)
        self.own = time.process_time() - self._self

    def spent(self, part: str) -> dict:
        return {key: self.last[part][key] - self.first[part][key] for key in self.last[part]}

    def total(self, part: str) -> float:
        return sum(self.spent(part).values())


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
    worker accepts first; a pair of a kind not wanted (any more) is closed
    unmeasured. A kind "any" takes every pair, whatever its kind."""
    base = f"ws://127.0.0.1:{port}"
    results: list[tuple[str, float, float]] = []
    for _ in range(8 * sum(want.values())):
        kinds = [kind for kind, *_ in results]
        if "any" in want and len(results) >= want["any"]:
            break
        if "any" not in want and all(kinds.count(kind) >= n for kind, n in want.items()):
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
                if "any" not in want and kinds.count(kind) >= want.get(kind, 0):
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
            # With the link, golem sockets are handed to their minion's worker
            # (herder/handoff.py): every pair as it comes.
            want = {"any": 2 * args.pairs} if link else {"split": args.pairs}
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


def minion_figures(herd: subprocess.Popen, port: int, seconds: float, instance: str) -> dict:
    """Runs/s of 4 looping clients, and the CPU each part spent per run."""
    with CpuMeter(herd.pid, label=("herder.instance", instance)) as meter:
        rate, errors = runs_per_second(port, seconds)
    runs = max(rate * seconds, 1)
    return {
        "rate": rate,
        "errors": errors,
        "cpu": {
            "herd": meter.total("herd") / runs,
            "minions": meter.total("containers") / runs,
            "engine": meter.total("engine") / runs,
            "database": meter.total("database") / runs,
            "clients": meter.own / runs,
        },
    }


# wrk paced: each connection waits a random time (mean: connections / rate)
# before each request, so requests come at about the rate, not as fast as answered.
PACED = """
local mean = 0
function init(args) mean = tonumber(args[1]) end
function delay() return math.random() * 2 * mean end
"""


def run_wrk(url: str, seconds: float, connections: int, rate: float | None = None) -> dict:
    """wrk's requests/s, p50 (ms), non-2xx count; at `rate` requests/s when given."""
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if rate:
            script.write(PACED)
            script.flush()
            command += ["-s", script.name, url, "--", f"{1000 * connections / rate:.3f}"]
        else:
            command.append(url)
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit],
        "errors": int(errors.group(1)) if errors else 0,
    }


def connections_per_worker(herd: subprocess.Popen, port: int) -> list[int]:
    """Established client connections each worker holds (its accepted sockets)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    counts = []
    for pid in descendants(herd.pid):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        held = 0
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
        if held:
            counts.append(held)
    return counts


def switches(pid: int) -> tuple[int, int]:
    """A process's main thread's context switches so far: (voluntary: it waited
    for work, involuntary: it was preempted)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return (0, 0)
    found = {line.split(":")[0]: int(line.split()[1]) for line in lines if "ctxt_switches" in line}
    return found.get("voluntary_ctxt_switches", 0), found.get("nonvoluntary_ctxt_switches", 0)


def proxy_figures(herd: subprocess.Popen, port: int, proxied: str, direct: str, daemon: str, args) -> dict:
    """The proxy at full speed (wrk), with the CPU each part spent per request
    and how the workers shared the load, and the daemon reached directly."""
    held: list[int] = []
    counter = threading.Timer(args.seconds / 2, lambda: held.extend(connections_per_worker(herd, port)))
    pids = descendants(herd.pid)
    before = [switches(pid) for pid in pids]
    with CpuMeter(herd.pid, containers=(daemon,)) as meter:
        counter.start()
        proxy = run_wrk(proxied, args.seconds, args.connections)
    counter.join()
    requests = max(proxy["rps"] * args.seconds, 1)
    after = [switches(pid) for pid in pids]
    proxy["switches"] = tuple(
        sum(done[kind] - began[kind] for began, done in zip(before, after, strict=True)) / requests for kind in (0, 1)
    )
    workers = {
        pid: spent for pid, spent in meter.spent("herd").items() if pid != herd.pid or len(meter.spent("herd")) == 1
    }
    proxy["cpu"] = {
        "herd": meter.total("herd") / requests,
        "daemon": meter.total("containers") / requests,
        "wrk": meter.children / requests,
    }
    proxy["shares"] = sorted((spent / max(sum(workers.values()), 1e-9) for spent in workers.values()), reverse=True)
    proxy["connections"] = sorted(held, reverse=True)
    with CpuMeter(herd.pid, containers=(daemon,)) as meter:
        straight = run_wrk(direct, args.seconds, args.connections)
    requests = max(straight["rps"] * args.seconds, 1)
    straight["cpu"] = {"daemon": meter.total("containers") / requests, "wrk": meter.children / requests}
    return {"proxy": proxy, "direct": straight}


# Many connections, each mostly waiting: a connection's pace is its delay plus
# its request's latency, which then moves the rate little.
PACED_CONNECTIONS = 50


def paced_figures(proxied: str, direct: str, rate: float, args) -> dict:
    """p50 through the proxy and straight to the daemon, both at `rate` requests/s."""
    return {
        "rate": rate,
        "proxy": run_wrk(proxied, args.seconds, PACED_CONNECTIONS, rate=rate),
        "direct": run_wrk(direct, args.seconds, PACED_CONNECTIONS, rate=rate),
    }


def measure(workers: int, env: dict[str, str], token: str, args, rate: float | None = None) -> dict:
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
        body = urllib.parse.urlencode({"name": f"bench{workers}", "image": args.image, "ports": "[8080]"}).encode()
        request = urllib.request.Request(
            f"{base}/daemon/v1/spawn", data=body, headers={"Authorization": f"Bearer {token}"}
        )
        answer = json.load(urllib.request.urlopen(request, timeout=60))
        direct = f"http://127.0.0.1:{answer['Ports']['8080']}/hello"
        proxied = f"{base}{answer['ProxyURL'].rstrip('/')}/hello"
        wait_for(direct)
        wait_for(proxied)
        daemon = subprocess.run(
            ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=herder.instance={env['HERDER_INSTANCE']}"]
            + ["--filter", "label=herder.kind=daemon"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[0]
        figures = {
            "load": os.getloadavg()[0],
            "runs": minion_figures(herd, port, args.seconds, env["HERDER_INSTANCE"]),
            **proxy_figures(herd, port, proxied, direct, daemon, args),
        }
        # Half the one-worker maximum, for both: the latency a second worker buys at the same load.
        figures["paced"] = paced_figures(proxied, direct, rate or figures["proxy"]["rps"] / 2, args)
        kill = urllib.request.Request(
            f"{base}/daemon/v1/kill/bench{workers}?wipe=true", headers={"Authorization": f"Bearer {token}"}
        )
        urllib.request.urlopen(kill, timeout=30).read()
        return figures
    finally:
        herd.send_signal(signal.SIGTERM)
        herd.wait(timeout=60)


def print_throughput(one: dict, many: dict, workers: int) -> None:
    """The minion and proxy figures beside their targets (issue 12), and the CPU
    per request or run of each part, which says why the ratios are what they are."""
    us = lambda seconds: f"{seconds * 1e6:6.0f}"  # noqa: E731
    ms = lambda seconds: f"{seconds * 1e3:6.1f}"  # noqa: E731

    def line(label: str, a: float, b: float, target: str = "", fmt: str = "8.1f") -> None:
        ratio = f"x{b / a:.2f}" if a else "-"
        print(f"  {label:36} {a:{fmt}}  {b:{fmt}}  {ratio:>6}  {target}")

    print(f"  {'':36} {'1 worker':>8}  {workers:>1} workers   ratio  target")
    line("minion runs/s (4 clients)", one["runs"]["rate"], many["runs"]["rate"], "x1.50")
    for label, part in (
        ("herd", "herd"),
        ("minion containers", "minions"),
        ("engine (shared)", "engine"),
        ("PostgreSQL (shared)", "database"),
        ("clients (this script)", "clients"),
    ):
        print(f"    CPU ms per run, {label:22} {ms(one['runs']['cpu'][part])}    {ms(many['runs']['cpu'][part])}")
    per_run = sum(one["runs"]["cpu"].values())
    ceiling = (os.cpu_count() or 1) / per_run
    print(
        f"    the CPU bound: {os.cpu_count()} cores / {per_run * 1e3:.0f} ms a run = {ceiling:.1f} runs/s, "
        f"x{ceiling / one['runs']['rate']:.2f} of one worker's rate (the runs' own containers share the cores)"
    )
    print(
        f"      (x{(os.cpu_count() or 1) / sum(many['runs']['cpu'].values()) / one['runs']['rate']:.2f} "
        f"with the CPU per run as measured with {workers} workers)"
    )
    print(f"    errors {one['runs']['errors']} / {many['runs']['errors']}")
    line("proxy req/s (wrk)", one["proxy"]["rps"], many["proxy"]["rps"], "x1.60", "8.0f")
    for label, part in (("herd", "herd"), ("daemon", "daemon"), ("wrk", "wrk")):
        print(f"    CPU us per request, {label:18} {us(one['proxy']['cpu'][part])}    {us(many['proxy']['cpu'][part])}")
    cpu = one["proxy"]["cpu"]
    bound = 2 * cpu["herd"] / (cpu["herd"] + cpu["daemon"] + cpu["wrk"])
    print(
        f"    the CPU bound on 2 cores, 2*herd/(herd+daemon+wrk): x{bound:.2f} "
        f"(one worker fills one core; two share both with the daemon and wrk)"
    )
    busy = many["proxy"]["cpu"]
    print(
        f"    with each part's CPU per request as measured with {workers} workers (4 busy processes on 2 cores "
        f"switch more and share caches): x{2 * cpu['herd'] / (busy['herd'] + busy['daemon'] + busy['wrk']):.2f}"
    )
    print(
        "    the herd's main threads, context switches per request, voluntary / involuntary: "
        f"{one['proxy']['switches'][0]:.2f} / {one['proxy']['switches'][1]:.2f}  "
        f"{many['proxy']['switches'][0]:.2f} / {many['proxy']['switches'][1]:.2f} "
        "(preempted by wrk's and the daemon's wakeups)"
    )
    print(
        f"    workers' shares of the herd's CPU: {' / '.join(f'{s:.0%}' for s in many['proxy']['shares'])}; "
        f"client connections held: {' / '.join(map(str, many['proxy']['connections']))}"
    )
    print(f"    non-2xx {one['proxy']['errors']} / {many['proxy']['errors']}")
    line("daemon direct req/s (the ceiling)", one["direct"]["rps"], many["direct"]["rps"], "", "8.0f")
    print(f"    CPU us per request, daemon {us(one['direct']['cpu']['daemon'])}, wrk {us(one['direct']['cpu']['wrk'])}")
    paced = many["paced"]
    print(f"  at {paced['rate']:.0f} req/s (half of one worker's maximum, {PACED_CONNECTIONS} connections), p50 ms:")
    line("proxy", one["paced"]["proxy"]["p50"], paced["proxy"]["p50"], "", "8.2f")
    line("daemon directly", one["paced"]["direct"]["p50"], paced["direct"]["p50"], "", "8.2f")
    print(
        f"    proxy / direct with {workers} workers: x{paced['proxy']['p50'] / paced['direct']['p50']:.2f}"
        f"  (target x1.30; with 1 worker x{one['paced']['proxy']['p50'] / one['paced']['direct']['p50']:.2f})"
        f"; rates reached {paced['proxy']['rps']:.0f} / {paced['direct']['rps']:.0f} req/s"
    )
    floor = (paced["direct"]["p50"] + many["proxy"]["cpu"]["herd"] * 1e3) / paced["direct"]["p50"]
    print(
        f"    its floor, (direct p50 + the herd's CPU per request) / direct p50: x{floor:.2f} "
        "(a proxied request waits at least for its own processing)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--relay-only", action="store_true", help="only the relay round trip")
    parser.add_argument("--image", default=DAEMON, help="the daemon proxied (default: %(default)s)")
    args = parser.parse_args()
    if not args.relay_only and shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)
    if not args.relay_only:
        subprocess.run(
            ["bash", "deploy/build-images.sh", args.image.split("/")[-1].split(":")[0]], cwd=ROOT, check=True
        )

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
                HERDER_DAEMON_IMAGES=args.image,
                # Its containers, told apart from everybody else's on the engine (CPU accounting).
                HERDER_INSTANCE=database.replace("_", "-"),
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
                    # Paced at half of one worker's maximum, both times.
                    rate = results[1]["proxy"]["rps"] / 2 if workers > 1 else None
                    results[workers] = measure(workers, env, token, args, rate=rate)
                relay[workers] = measure_relay(workers, env, args)
            relay["redis"] = measure_relay(args.workers, env, args, link=False)
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    print(
        f"herd --workers 1 vs --workers {args.workers} ({os.cpu_count()} cores; PostgreSQL, Redis; "
        f"load average {os.getloadavg()[0]:.1f} at the end)"
    )
    print_relay(relay, args.workers)
    if args.relay_only:
        return
    one, many = results[1], results[args.workers]
    print(f"  (load average {one['load']:.1f} / {many['load']:.1f} when each herd started; daemon {args.image})")
    print_throughput(one, many, args.workers)


if __name__ == "__main__":
    main()
