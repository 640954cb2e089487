"""What one node spends per golem, per daemon, per paired socket, and how fast
its engine creates containers: the figures the README's "Capacity" plan is
computed from.

Starts `manage.py herd` (SQLite, the in-memory layer, one process) on a free
loopback port with its own data folder and `HERDER_INSTANCE` label, and a
webstrates server stub on loopback whose page's golem code opens the control
socket, says so to the stub, and echoes every ad-hoc minion (`--page`: a file
put in that page's body, to measure golems of a real webstrate's weight).
Then, one after another:

  1. the herder at rest: RSS and PSS (/proc), CPU while idle;
  2. idle WebSockets: `--sockets` ad-hoc minions waiting for a golem: RSS and
     CPU each;
  3. paired sockets: `--controls` control sockets playing golems, then
     `--pairs` ad-hoc minions paired with them: the herder's RSS and idle CPU
     per control socket (presence refreshes) and per pair (heartbeat pings),
     and its CPU per relayed message (`--messages` round trips each, all pairs
     at once);
  4. golems: `--golems` real golems (Chromium) started one at a time (the CPU
     each took to start), each paired with a minion sending `--golem-messages`
     round trips through the page's code (CPU per round trip, the golem's and
     the herder's); then, idle: each container's memory (cgroup: usage as
     `docker stats` shows it, anonymous memory, tmpfs, peak), pids, the
     engine's processes beside it (containerd shim, docker-proxy), CPU over
     `--window` seconds, and the herder's idle CPU per golem;
  5. daemons: `--daemons` herder/daemon-echo daemons, 200 proxied requests each
     (the herder's CPU per request), then idle: the same figures, and the
     herder's idle CPU per running daemon (its supervisor's passes);
  6. the engine: containers created and started per second (`--creates`),
     minion-like (the warm pool's spec, attached) one at a time and
     `--concurrency` at a time, and golem-like (the golem's spec, its seccomp
     profile included) one at a time, each removed at once; the CPU seconds
     dockerd and containerd spend per container; a warm minion's memory;
  7. the supervisor's metering: CPU per running daemon per pass (rows only,
     `--metered` of them), on SQLite and on PostgreSQL (`--postgres`, a
     database of its own, dropped after; skipped when it does not answer);
  8. `herd --workers 2` on Redis (`--redis`; skipped when it does not
     answer): the parent's and each worker's RSS and PSS at rest.

Memory and CPU seconds are what contention distorts least: CPU figures are
from /proc/<pid>/stat and the containers' cgroups (cpuacct.usage, or cpu.stat
on cgroup v2), never wall time, except the create rate, which is a rate. The
machine's load average is printed beside each part. Everything it starts
carries its own `herder.instance` label and is removed at the end (containers,
their volumes, networks), also when it fails.

    .venv/bin/python bench/capacity.py [--golems 3] [--daemons 3] [--pairs 200]
        [--sockets 1000] [--creates 20] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")
ECHO = "herder/daemon-echo:latest"

# The golem's code: open the control socket, tell the stub when it is open,
# echo every ad-hoc minion's text frames (the herder's events are JSON).
GOLEM_CODE = """
var id = herder.webstrateId();
var control = new WebSocket(herder.ws + "/golem/v1/connect/" + id);
control.onopen = function () { fetch(location.origin + "/ready/" + id).catch(function () {}); };
control.onmessage = function (message) {
  var event = JSON.parse(message.data);
  if (event.Event !== "minion-connected") return;
  var minion = new WebSocket(herder.ws + "/golem/v1/connect-to/" + id + "/" + event.ID);
  minion.onmessage = function (frame) {
    if (typeof frame.data === "string" && frame.data.indexOf("{") !== 0) minion.send(frame.data);
  };
};
"""


# --- Measures ------------------------------------------------------------------


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (5 min {five:.2f})"


def rss_pss_mib(pid: int) -> tuple[float, float]:
    """Resident and proportional set size (shared pages split among their users)."""
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) / 1024
    return rss, pss


def rss_mib(pid: int) -> float:
    return rss_pss_mib(pid)[0]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pids_named(*names: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                found.append(int(entry.name))
    return sorted(found)


def engine_cpu() -> float:
    """dockerd's and containerd's CPU seconds (the shims of removed containers
    are gone and not counted)."""
    total = 0.0
    for pid in pids_named("dockerd", "containerd"):
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


class Cgroup:
    """A container's cgroup, v1 or v2, found from its init process."""

    def __init__(self, container_id: str) -> None:
        pid = docker("inspect", "-f", "{{.State.Pid}}", container_id).strip()
        self.v2: Path | None = None
        self.v1: dict[str, Path] = {}
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                self.v2 = Path("/sys/fs/cgroup") / path.lstrip("/")
            for controller in controllers.split(","):
                self.v1[controller] = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
        if "memory" in self.v1:
            self.v2 = None

    def _read(self, controller: str, v1: str, v2: str) -> str | None:
        path = self.v1[controller] / v1 if self.v2 is None else self.v2 / v2
        try:
            return path.read_text()
        except OSError:
            return None

    def _stat(self) -> dict[str, int]:
        text = self._read("memory", "memory.stat", "memory.stat") or ""
        return {k: int(v) for k, v in (line.split() for line in text.splitlines())}

    def memory(self) -> dict[str, float]:
        """MiB: `usage` as docker stats shows it (less inactive file pages),
        `anon` (the processes' own memory), `shmem` (tmpfs /tmp, /dev/shm),
        `peak` (the most it ever charged, file pages included)."""
        stat = self._stat()
        usage = int(self._read("memory", "memory.usage_in_bytes", "memory.current") or 0)
        peak = self._read("memory", "memory.max_usage_in_bytes", "memory.peak")
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        anon = stat.get("total_rss", stat.get("anon", 0))
        shmem = stat.get("total_shmem", stat.get("shmem", 0))
        return {
            "usage": (usage - inactive) / MIB,
            "anon": anon / MIB,
            "shmem": shmem / MIB,
            "peak": int(peak) / MIB if peak else float("nan"),
        }

    def cpu_seconds(self) -> float:
        if self.v2 is None:
            return int(self._read("cpuacct", "cpuacct.usage", "") or 0) / 1e9
        for line in (self._read("cpu", "", "cpu.stat") or "").splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
        return float("nan")

    def pids(self) -> int:
        return int(self._read("pids", "pids.current", "pids.current") or 0)


def engine_processes(container_id: str) -> tuple[float, float, int]:
    """RSS and PSS (MiB) of the processes the engine runs beside a container,
    outside its cgroup: its containerd shim and a docker-proxy per published
    port; and how many."""
    published = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", container_id) or "null") or {}
    ports = {b["HostPort"] for bindings in published.values() if bindings for b in bindings}
    rss = pss = 0.0
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            shim = "containerd-shim" in argv[0] and container_id in argv
            proxy = argv[0].endswith("docker-proxy") and any(
                a == "-host-port" and b in ports for a, b in zip(argv, argv[1:], strict=False)
            )
            if shim or proxy:
                r, p = rss_pss_mib(int(entry.name))
                rss, pss, count = rss + r, pss + p, count + 1
        except OSError:
            continue
    return rss, pss, count


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def idle_cpu(measures: dict[str, callable], window: float) -> dict[str, float]:
    """Each callable's CPU seconds per second over `window` seconds."""
    before = {name: read() for name, read in measures.items()}
    time.sleep(window)
    return {name: (read() - before[name]) / window for name, read in measures.items()}


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, what: str, figure: str, note: str = "") -> None:
        self.rows.append((what, figure, note))
        print(f"  {what:46} {figure:>24}  {note}", flush=True)

    def print(self) -> None:
        print("\n" + "=" * 100)
        print(f"{'what':48} {'figure':>24}  how / when")
        for what, figure, note in self.rows:
            print(f"{what:48} {figure:>24}  {note}")


# --- The herder and the stub -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"herd exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("herd did not answer")


def http(url: str, data: bytes | None = None, token: str | None = None, timeout: float = 120) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.read()


class WebstratesStub:
    """The same page for every /<id>/; /ready/<id> records a golem whose control
    socket opened."""

    def __init__(self, herder_url: str, body: str = "<h1>bench</h1>") -> None:
        page = f"""<!doctype html><html><head><title>bench</title>
<script src="{herder_url}/golem/v1/"></script></head><body>{body}
<script type="text/plain" class="golem">{GOLEM_CODE}</script></body></html>""".encode()
        self.ready: set[str] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/ready/"):
                    owner.ready.add(path[len("/ready/") :])
                    content, status = b"", 204
                elif path.count("/") == 2 and path.endswith("/"):
                    content, status = page, 200
                else:
                    content, status = b"not found", 404
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def herd_env(data: str, instance: str, port: int, webstrates: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        HERDER_DATA_DIR=data,
        HERDER_LOG_LEVEL="WARNING",
        HERDER_INSTANCE=instance,
        HERDER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        HERDER_WEBSTRATES_URL=webstrates,
        HERDER_GOLEM_CHECK_EXISTS="false",
        HERDER_GOLEM_SPAWN_RATE="",
        HERDER_GOLEM_MAX="0",
        HERDER_DAEMON_IMAGES=ECHO,
        HERDER_MINION_POOL_SIZE="0",
        # The bench's clients are all 127.0.0.1; the per-process total is what it measures.
        HERDER_WS_MAX_PER_CLIENT="100000",
        HERDER_WS_MAX="100000",
        # Idle minions wait for a golem for the whole part instead of 20 s.
        HERDER_GOLEM_WAIT="3600",
        DJANGO_SETTINGS_MODULE="herder.settings",
    )
    return env


# --- The parts --------------------------------------------------------------------


async def idle_sockets(port: int, count: int, tag: str) -> list:
    sockets = []
    for start in range(0, count, 50):
        batch = [
            connect(f"ws://127.0.0.1:{port}/minion/v1/connect/idle-{tag}-{i % 50}?type=bench")
            for i in range(start, min(start + 50, count))
        ]
        sockets += await asyncio.gather(*batch)
    return sockets


class Pairs:
    """`controls` sockets playing golems and `pairs` ad-hoc minions paired with
    them; the golem side echoes."""

    def __init__(self, port: int, tag: str) -> None:
        self.base = f"ws://127.0.0.1:{port}"
        self.tag = tag
        self.controls: list = []
        self.golem_sides: list = []
        self.minions: list = []
        self.tasks: list[asyncio.Task] = []

    async def _control(self, webstrate: str, ready: asyncio.Event) -> None:
        async with connect(f"{self.base}/golem/v1/connect/{webstrate}") as control:
            self.controls.append(control)
            ready.set()
            async for message in control:
                event = json.loads(message)
                if event.get("Event") == "minion-connected":
                    self.tasks.append(asyncio.create_task(self._golem_side(webstrate, event["ID"])))

    async def _golem_side(self, webstrate: str, minion: str) -> None:
        async with connect(f"{self.base}/golem/v1/connect-to/{webstrate}/{minion}", max_queue=None) as side:
            self.golem_sides.append(side)
            async for frame in side:
                if isinstance(frame, str) and not frame.startswith("{"):
                    await side.send(frame)

    async def open_controls(self, count: int) -> None:
        for n in range(count):
            ready = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._control(f"pair-{self.tag}-{n}", ready)))
            await ready.wait()

    async def open_pairs(self, count: int) -> None:
        async def one(n: int):
            webstrate = f"pair-{self.tag}-{n % len(self.controls)}"
            minion = await connect(f"{self.base}/minion/v1/connect/{webstrate}?type=bench", max_queue=None)
            while json.loads(await minion.recv()).get("Event") != "golem-connected":
                pass
            self.minions.append(minion)

        for start in range(0, count, 20):
            await asyncio.gather(*(one(n) for n in range(start, min(start + 20, count))))

    async def round_trips(self, count: int) -> None:
        async def loop(minion):
            for i in range(count):
                await minion.send(f"ping {i}")
                while (await minion.recv()).startswith("{"):
                    pass

        await asyncio.gather(*(loop(m) for m in self.minions))

    async def close(self) -> None:
        for minion in self.minions:
            await minion.close()
        for control in self.controls:
            await control.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def golem_round_trips(port: int, webstrate: str, count: int) -> None:
    async with connect(f"ws://127.0.0.1:{port}/minion/v1/connect/{webstrate}?type=bench") as minion:
        while json.loads(await minion.recv()).get("Event") != "golem-connected":
            pass
        for i in range(count):
            await minion.send(f"ping {i}")
            while (answer := await minion.recv()).startswith("{"):
                pass
            assert answer == f"ping {i}", answer


def containers(instance: str, kind: str, owner: str | None = None) -> list[str]:
    owned = ["--filter", f"label=herder.owner={owner}"] if owner else []
    return docker(
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        f"label=herder.instance={instance}",
        "--filter",
        f"label=herder.kind={kind}",
        *owned,
    ).split()


def container_figures(table: Table, label: str, ids: list[str], window: float) -> dict:
    cgroups = [Cgroup(cid) for cid in ids]
    cpu = idle_cpu({str(n): cgroup.cpu_seconds for n, cgroup in enumerate(cgroups)}, window)
    memories = [cgroup.memory() for cgroup in cgroups]
    figures = {
        "usage": [m["usage"] for m in memories],
        "anon": [m["anon"] for m in memories],
        "shmem": [m["shmem"] for m in memories],
        "peak": [m["peak"] for m in memories],
        "pids": [float(c.pids()) for c in cgroups],
        "cpu": [100 * v for v in cpu.values()],
    }
    n = len(cgroups)
    beside = [engine_processes(c) for c in ids]
    table.add(
        f"{label}: memory idle (docker stats)", f"{summary(figures['usage'])} MiB", f"median (range) of {n}, {load()}"
    )
    table.add(f"{label}: anonymous memory idle", f"{summary(figures['anon'])} MiB", "cgroup memory.stat rss/anon")
    table.add(f"{label}: tmpfs/shm idle", f"{summary(figures['shmem'])} MiB", "cgroup memory.stat shmem")
    table.add(f"{label}: memory peak", f"{summary(figures['peak'])} MiB", "cgroup max usage, file pages included")
    table.add(f"{label}: pids idle", summary(figures["pids"]), "cgroup pids.current")
    table.add(
        f"{label}: shim, proxies beside it",
        f"{summary([b[0] for b in beside])} / {summary([b[1] for b in beside])} MiB",
        f"RSS / PSS of its containerd shim and docker-proxies ({summary([float(b[2]) for b in beside])} processes)",
    )
    table.add(f"{label}: CPU idle", f"{summary(figures['cpu'])} % core", f"cgroup CPU seconds over {window:.0f} s")
    return figures


def engine_rate(table: Table, args, tag: str) -> None:
    """Create+start rates with the herder's own runtime and specs."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from golems.services import golem_container_spec
    from herder.runtime import get_runtime
    from minions.services import minion_image, minion_spec

    runtime = get_runtime()

    def minion_like(_n: int = 0):
        started = time.perf_counter()
        handle, attachment = runtime.start_attached(
            minion_spec(env="python", image=minion_image("python"), owner=f"bench-capacity-{tag}")
        )
        return time.perf_counter() - started, handle, attachment

    def golem_like(n: int):
        spec = golem_container_spec(f"cap-{tag}-create-{n}", secrets.token_hex(8))
        started = time.perf_counter()
        handle = runtime.start(spec)
        return time.perf_counter() - started, handle, None

    def drop(handle, attachment) -> None:
        if attachment is not None:
            attachment.close()
        runtime.remove(handle)

    # A warm minion's memory: what each pool slot costs, idle.
    warm = [minion_like() for _ in range(3)]
    time.sleep(5)
    memories = [Cgroup(h.id).memory() for _, h, _ in warm]
    for _, handle, attachment in warm:
        drop(handle, attachment)
    table.add(
        "warm minion (python): memory, before a run",
        f"{summary([m['usage'] for m in memories])} MiB",
        f"3 pool-like containers, {load()}",
    )

    def sequential(make, count: int) -> tuple[float, float, float]:
        engine_before, spent = engine_cpu(), 0.0
        for n in range(count):
            took, handle, attachment = make(n)
            spent += took
            drop(handle, attachment)
        return count / spent, (engine_cpu() - engine_before) / count, spent / count

    def concurrent(make, count: int, width: int) -> float:
        made = []
        started = time.perf_counter()
        with ThreadPoolExecutor(width) as pool:
            made = list(pool.map(make, range(count)))
        elapsed = time.perf_counter() - started
        with ThreadPoolExecutor(width) as pool:
            list(pool.map(lambda m: drop(m[1], m[2]), made))
        return count / elapsed

    _, handle, attachment = minion_like()  # warm the client's connections
    drop(handle, attachment)
    rate, engine, each = sequential(minion_like, args.creates)
    table.add(
        "engine: minion-like create+start, 1 at a time",
        f"{rate:.1f} /s",
        f"{each * 1000:.0f} ms each; dockerd+containerd {engine * 1000:.0f} ms CPU per container (with removal); {load()}",
    )
    rate = concurrent(minion_like, args.creates, args.concurrency)
    table.add(f"engine: minion-like create+start, {args.concurrency} at a time", f"{rate:.1f} /s", load())
    count = max(3, args.creates // 2)
    rate, engine, each = sequential(golem_like, count)
    table.add(
        "engine: golem-like create+start, 1 at a time",
        f"{rate:.1f} /s",
        f"{each * 1000:.0f} ms each (n={count}); dockerd+containerd {engine * 1000:.0f} ms CPU per container; {load()}",
    )


def metering_rows(count: int, passes: int = 4) -> None:
    """(Run in a subprocess on the database its environment names.) What the
    supervisor's pass does per running daemon: charge it (a transaction under
    its row's lock, the hour's ledger row grown) and read its account's
    balance; prints CPU and wall seconds per daemon per pass as JSON."""
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from datetime import UTC, datetime, timedelta

    from accounts.services import account_balance, account_get_or_create, credits_grant
    from daemons.models import Daemon
    from daemons.services import daemon_charge

    start = datetime.now(UTC) - timedelta(hours=1)
    account = account_get_or_create(email=f"bench-capacity-{secrets.token_hex(4)}@herder.test")
    credits_grant(account=account, amount=10**12)
    rows = [
        Daemon.objects.create(
            owner=account,
            name=f"m{i}",
            full_name=f"m{i}-bench",
            image=ECHO,
            volume=f"herder-test-capacity-{i}",
            state=Daemon.State.RUNNING,
            started=start,
            metered_until=start,
        )
        for i in range(count)
    ]
    cpu, wall = time.process_time(), time.perf_counter()
    for step in range(1, passes + 1):
        now = start + timedelta(seconds=5 * step)
        for daemon in rows:
            charged = daemon_charge(daemon, until=now)
            account_balance(charged.owner)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    Daemon.objects.filter(pk__in=[d.pk for d in rows]).update(state=Daemon.State.KILLED, stopped=now)
    print(json.dumps({"cpu": cpu / (count * passes), "wall": wall / (count * passes)}))


def metering(table: Table, args, env: dict[str, str]) -> None:
    """The leader's metering per daemon per pass, on SQLite (the bench's data
    folder) and on PostgreSQL (a database of its own, dropped after) when it
    answers."""

    def measure(label: str, extra: dict[str, str]) -> None:
        out = subprocess.run(
            [sys.executable, __file__, "--metering-rows", str(args.metered)],
            cwd=ROOT,
            env={**env, **extra},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        table.add(
            f"supervisor: metering per daemon per pass, {label}",
            f"{figures['cpu'] * 1000:.2f} ms CPU",
            f"{figures['wall'] * 1000:.2f} ms wall; {args.metered} daemon rows, the herder's side only; {load()}",
        )

    measure("SQLite", {})
    try:
        import psycopg

        database = f"herder_test_capacity_{secrets.token_hex(4)}"
        with psycopg.connect(args.postgres, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
    except Exception as exc:
        table.add("supervisor: metering, PostgreSQL", "skipped", f"{args.postgres}: {exc}")
        return
    try:
        measure("PostgreSQL", {"DATABASE_URL": args.postgres.rsplit("/", 1)[0] + f"/{database}"})
    finally:
        drop_database(args.postgres, database)


def drop_database(url: str, database: str) -> None:
    """Drop it, waiting for backends that are not ours (an autovacuum worker
    after the inserts) to leave: FORCE may not end another role's."""
    import psycopg

    for attempt in range(30):
        try:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            if attempt == 29:
                raise
            time.sleep(1)


def workers_at_rest(table: Table, args, data: str, instance: str, webstrates: str) -> None:
    host, _, rest = args.redis.partition("//")[2].partition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(rest.split("/")[0] or 6379)), timeout=1).close()
    except (OSError, ValueError):
        table.add("herd --workers 2", "skipped", f"Redis at {args.redis} does not answer")
        return
    port = free_port()
    env = herd_env(data, instance, port, webstrates)
    env["REDIS_URL"] = args.redis
    herd = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, herd)
        for _ in range(20):
            http(f"http://127.0.0.1:{port}/api/schema/")
        time.sleep(3)
        workers = children_of(herd.pid)
        parent = rss_pss_mib(herd.pid)
        each = [rss_pss_mib(pid) for pid in workers]
        cpu = idle_cpu({str(pid): (lambda p=pid: cpu_seconds(p)) for pid in [herd.pid, *workers]}, args.window)
        table.add("herd --workers 2: parent RSS / PSS", f"{parent[0]:.0f} / {parent[1]:.0f} MiB", load())
        table.add(
            "herd --workers 2: each worker RSS / PSS",
            " | ".join(f"{r:.0f} / {p:.0f}" for r, p in each) + " MiB",
            f"{len(workers)} workers, Redis layer",
        )
        table.add(
            "herd --workers 2: CPU idle, all processes",
            f"{100 * sum(cpu.values()):.2f} % core",
            f"over {args.window:.0f} s (each process's supervisor; one holds the lease)",
        )
    finally:
        herd.send_signal(signal.SIGTERM)
        try:
            herd.wait(60)
        except subprocess.TimeoutExpired:
            herd.kill()
            herd.wait()


def clean_up(instance: str) -> None:
    """Remove every container of this run, their volumes, and its networks."""
    ids = docker("ps", "-aq", "--no-trunc", "--filter", f"label=herder.instance={instance}").split()
    volumes = []
    if ids:
        for line in docker(
            "inspect", "-f", '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}', *ids
        ).splitlines():
            volumes += line.split()
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    volumes = [v for v in volumes if v.startswith("herder-daemon-")]
    if volumes:
        subprocess.run(["docker", "volume", "rm", *volumes], capture_output=True)
    networks = docker("network", "ls", "-q", "--filter", f"label=herder.instance={instance}").split()
    if networks:
        subprocess.run(["docker", "network", "rm", *networks], capture_output=True)
    print(f"removed {len(ids)} containers, {len(volumes)} volumes, {len(networks)} networks of this run")


def herd_parts(
    table: Table, args, env: dict, data: str, port: int, stub: WebstratesStub, instance: str, tag: str
) -> None:
    """Parts 1-5, on one `herd`; stops it, kills its golems and daemons."""
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    token = (
        subprocess.run(
            [sys.executable, "manage.py", "mint_token", "-e", "bench@herder.test", "-c", "100000000"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    herd = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(data) / "herd.log", "wb"),
    )
    base = f"http://127.0.0.1:{port}"
    herder_cpu = {"herder": lambda: cpu_seconds(herd.pid)}
    golems: list[str] = []
    daemons: list[str] = []
    try:
        wait_listening(port, herd)
        for _ in range(20):
            http(f"{base}/api/schema/")
            http(f"{base}/golem/v1/ls")
        time.sleep(3)

        print(f"1. the herder at rest ({load()})")
        rest_rss, rest_pss = rss_pss_mib(herd.pid)
        table.add("herder, one process: RSS / PSS at rest", f"{rest_rss:.0f} / {rest_pss:.0f} MiB", load())
        baseline = idle_cpu(herder_cpu, args.window)["herder"]
        table.add(
            "herder, one process: CPU idle", f"{baseline * 100:.2f} % core", f"over {args.window:.0f} s (supervisor)"
        )

        print(f"2. {args.sockets} idle WebSockets ({load()})")

        async def sockets_part():
            before = rss_mib(herd.pid)
            opened = await idle_sockets(port, args.sockets, tag)
            await asyncio.sleep(3)
            after = rss_mib(herd.pid)
            cpu_before = cpu_seconds(herd.pid)
            await asyncio.sleep(args.window)
            cpu = (cpu_seconds(herd.pid) - cpu_before) / args.window
            for ws in opened:
                await ws.close()
            return before, after, cpu

        before, after, cpu = asyncio.run(sockets_part())
        table.add(
            "herder: RSS per idle WebSocket",
            f"{(after - before) * 1024 / args.sockets:.1f} KiB",
            f"{args.sockets} ad-hoc minions waiting: {before:.0f} -> {after:.0f} MiB; {load()}",
        )
        table.add(
            "herder: CPU per idle WebSocket",
            f"{max(0.0, cpu - baseline) * 1e6 / args.sockets:.1f} us/s",
            f"{cpu * 100:.2f} % core with them over {args.window:.0f} s, less the rest's",
        )
        time.sleep(2)

        print(f"3. {args.pairs} paired sockets on {args.controls} control sockets ({load()})")

        async def pairs_part():
            pairs = Pairs(port, tag)
            try:
                start = rss_mib(herd.pid)
                await pairs.open_controls(args.controls)
                await asyncio.sleep(2)
                controls = rss_mib(herd.pid)
                cpu_before = cpu_seconds(herd.pid)
                await asyncio.sleep(args.window)
                controls_idle = (cpu_seconds(herd.pid) - cpu_before) / args.window
                await pairs.open_pairs(args.pairs)
                await asyncio.sleep(3)
                paired = rss_mib(herd.pid)
                cpu_before = cpu_seconds(herd.pid)
                await asyncio.sleep(args.window)
                idle = (cpu_seconds(herd.pid) - cpu_before) / args.window
                cpu_before, started = cpu_seconds(herd.pid), time.perf_counter()
                await pairs.round_trips(args.messages)
                elapsed = time.perf_counter() - started
                relay = cpu_seconds(herd.pid) - cpu_before
                return start, controls, controls_idle, paired, idle, relay, elapsed, rss_mib(herd.pid)
            finally:
                await pairs.close()

        start, controls, controls_idle, paired, idle, relay, elapsed, busy = asyncio.run(pairs_part())
        messages = 2 * args.pairs * args.messages
        table.add(
            "herder: RSS per control socket",
            f"{(controls - start) * 1024 / args.controls:.1f} KiB",
            f"{args.controls} sockets playing golems; {load()}",
        )
        table.add(
            "herder: RSS per pair (minion + golem side)",
            f"{(paired - controls) * 1024 / args.pairs:.1f} KiB",
            f"{args.pairs} pairs: {controls:.0f} -> {paired:.0f} MiB (after relaying {busy:.0f} MiB)",
        )
        table.add(
            "herder: CPU per idle control socket",
            f"{max(0.0, controls_idle - baseline) * 1e6 / args.controls:.0f} us/s",
            f"{controls_idle * 100:.2f} % core with them over {args.window:.0f} s, less the rest's "
            "(presence refreshed every heartbeat)",
        )
        table.add(
            "herder: CPU per idle pair",
            f"{max(0.0, idle - controls_idle) * 1e6 / args.pairs:.0f} us/s",
            f"{idle * 100:.2f} % core with them over {args.window:.0f} s, less the controls' (heartbeat pings)",
        )
        table.add(
            "herder: CPU per relayed message",
            f"{relay * 1e6 / messages:.0f} us",
            f"{messages} messages ({args.messages} round trips x {args.pairs} pairs at once) in "
            f"{elapsed:.1f} s: {relay:.1f} s CPU; {load()}",
        )

        print(f"4. {args.golems} golems, one at a time ({load()})")
        golem_trip: list[float] = []
        golem_start: list[float] = []
        herder_trip: list[float] = []
        for n in range(args.golems):
            webstrate = f"cap-{tag}-{n}"
            golems.append(webstrate)
            started = time.perf_counter()
            http(f"{base}/golem/v1/spawn/{webstrate}")
            while webstrate not in stub.ready:
                if time.perf_counter() - started > 120:
                    raise SystemExit(f"golem {webstrate} did not open its control socket in 120 s")
                time.sleep(0.2)
            print(f"   {webstrate}: control socket open {time.perf_counter() - started:.1f} s after spawn ({load()})")
            cgroup = Cgroup(containers(instance, "golem", owner=webstrate)[0])
            golem_start.append(cgroup.cpu_seconds())
            cpu_before, herder_before = cgroup.cpu_seconds(), cpu_seconds(herd.pid)
            asyncio.run(golem_round_trips(port, webstrate, args.golem_messages))
            golem_trip.append((cgroup.cpu_seconds() - cpu_before) / args.golem_messages)
            herder_trip.append((cpu_seconds(herd.pid) - herder_before) / args.golem_messages)
        ids = containers(instance, "golem")
        time.sleep(10)  # settle after the load
        print(f"   {len(ids)} golems idle ({load()})")
        cpu = idle_cpu(herder_cpu, args.window)["herder"]
        container_figures(table, "golem", ids, args.window)
        table.add(
            "golem: CPU to start",
            f"{summary(golem_start)} s",
            "cgroup CPU seconds from its start until its page's control socket opened",
        )
        table.add(
            "golem: CPU per minion round trip",
            f"{summary([1e6 * t for t in golem_trip])} us",
            f"cgroup CPU over {args.golem_messages} round trips through the page's code",
        )
        table.add(
            "herder: CPU per idle golem",
            f"{max(0.0, cpu - baseline) * 1e6 / max(1, len(ids)):.0f} us/s",
            f"{cpu * 100:.2f} % core with them over {args.window:.0f} s, less the rest's; "
            f"per golem round trip {summary([1e6 * t for t in herder_trip])} us",
        )
        for webstrate in list(golems):
            http(f"{base}/golem/v1/kill/{webstrate}")
            golems.remove(webstrate)

        print(f"5. {args.daemons} daemons ({load()})")
        proxy_cpu: list[float] = []
        for n in range(args.daemons):
            body = urllib.parse.urlencode({"name": f"cap{n}", "image": ECHO, "ports": "[8080]"}).encode()
            answer = json.loads(http(f"{base}/daemon/v1/spawn", body, token))
            daemons.append(f"cap{n}")
            proxied = f"{base}{answer['ProxyURL'].rstrip('/')}/hello"
            deadline = time.monotonic() + 60
            while True:
                try:
                    http(proxied, timeout=5)
                    break
                except (urllib.error.HTTPError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            cpu_before = cpu_seconds(herd.pid)
            for _ in range(200):
                http(proxied)
            proxy_cpu.append((cpu_seconds(herd.pid) - cpu_before) / 200)
        time.sleep(5)
        daemon_ids = containers(instance, "daemon")
        cpu = idle_cpu(herder_cpu, args.window)["herder"]
        container_figures(table, "daemon (daemon-echo)", daemon_ids, args.window)
        table.add(
            "herder: CPU per running daemon",
            f"{max(0.0, cpu - baseline) * 1e6 / max(1, len(daemon_ids)):.0f} us/s",
            f"{cpu * 100:.2f} % core with them over {args.window:.0f} s, less the rest's (the supervisor's "
            "metering and checks every pass)",
        )
        table.add(
            "herder: CPU per proxied request",
            f"{summary([1e6 * t for t in proxy_cpu])} us",
            "GET /hello through /daemon/v1/proxy/, 200 one after another per daemon",
        )
        for name in list(daemons):
            http(f"{base}/daemon/v1/kill/{name}?wipe=true", token=token)
            daemons.remove(name)
    finally:
        for webstrate in golems:
            try:
                http(f"{base}/golem/v1/kill/{webstrate}", timeout=30)
            except Exception:
                pass
        for name in daemons:
            try:
                http(f"{base}/daemon/v1/kill/{name}?wipe=true", token=token, timeout=30)
            except Exception:
                pass
        herd.send_signal(signal.SIGTERM)
        try:
            herd.wait(60)
        except subprocess.TimeoutExpired:
            herd.kill()
            herd.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golems", type=int, default=3)
    parser.add_argument("--golem-messages", type=int, default=500)
    parser.add_argument(
        "--page",
        help="an HTML file put in the golems' page body (e.g. a saved webstrate): golems cost what their page does",
    )
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--controls", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--messages", type=int, default=50, help="round trips per pair")
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=20, help="seconds over which idle CPU is measured")
    parser.add_argument("--redis", default=os.environ.get("HERDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--postgres",
        default=os.environ.get("HERDER_BENCH_POSTGRES_URL", "postgres://herder:herder@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--metered", type=int, default=300, help="daemon rows the metering part charges")
    parser.add_argument("--metering-rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.metering_rows:
        metering_rows(args.metering_rows)
        return

    tag = secrets.token_hex(4)
    instance = f"herder-test-capacity-{tag}"
    port = free_port()
    body = Path(args.page).read_text() if args.page else "<h1>bench</h1>"
    stub = WebstratesStub(f"http://127.0.0.1:{port}", body)
    table = Table()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB; {load()}; instance {instance}")
    with tempfile.TemporaryDirectory(prefix="herder-test-capacity-") as data:
        env = herd_env(data, instance, port, stub.url)
        try:
            herd_parts(table, args, env, data, port, stub, instance, tag)
            print(f"6. the engine's create rate ({load()})")
            os.environ.update(env)
            for key in ("REDIS_URL", "DATABASE_URL"):
                os.environ.pop(key, None)
            engine_rate(table, args, tag)
            print(f"7. the supervisor's metering ({load()})")
            metering(table, args, env)
            print(f"8. herd --workers 2 at rest ({load()})")
            workers_at_rest(table, args, data, instance, stub.url)
        finally:
            stub.close()
            clean_up(instance)
    table.print()


if __name__ == "__main__":
    main()
