"""Abuse: is a well-behaved client still served while another floods the herder?

Starts `manage.py herd` (uvicorn) on a free loopback port with its own data
folder and temporary folder, measures a well-behaved client's python hello
world quiet, then while one client floods, then quiet again (the target is
twice the p95 of both quiet phases, so that the machine's own drift shows):

- minion runs from many concurrent loops (each burns CPU for a while),
  retrying at once when refused (it ignores Retry-After);
- WebSockets held open (ad-hoc minions waiting for golems);
- 1 GiB chunked uploads to minion and daemon spawn, in a loop;
- golem spawns for new webstrate ids;
- token password guessing.

The flood comes from 127.0.0.1, the good client from 127.0.0.2 (in a process
of its own, as another machine would be): two clients by address. The flood
is written as a flood tool would be (uvloop, raw requests and handshakes),
and its process runs at nice 19: an attacker's CPU is its own, and on two
cores its event loop would take one from the herder. It still takes what the
kernel gives a niced process of the herder's own session (--flood-idle: none
but idle CPU; it then asks far less often). Prints the good client's p50/p95 beside 2 x its quiet p95, its
errors, the herder's RSS growth, disk growth of its data and temporary
folders, and the flood's answers by status. All traffic goes to 127.0.0.1
and every part of the flood is bounded in count and time. Golem containers
the herd started are removed at the end (by its own herder.instance label).

    .venv/bin/python bench/abuse.py [--seconds 30] [--runs 64] [--sockets 500]
                                    [--uploads 4] [--golems 50] [--guessers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
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
import urllib.parse
from collections import Counter
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
GOOD_ADDRESS = "127.0.0.2"
DATABASE = "herder.sqlite3"  # and its -wal, -shm
HELLO = urllib.parse.urlencode({"env": "python", "main.py": "print('hello')"}).encode()
# The flood's runs hold their slots for two seconds: sleeping (admission:
# slots, threads, containers) or burning CPU (also the engine's CPU sharing).
FLOOD_PROGRAMS = {
    "sleep": "import time\ntime.sleep(2)\nprint('slept')",
    "burn": "import time\nend = time.time() + 2\nwhile time.time() < end: pass\nprint('burnt')",
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class IdleCgroup:
    """Moves this process into a cgroup of its own marked `cpu.idle` (Linux
    5.15+, cgroup v1 or v2, as root), undone on exit: it then runs only on CPU
    nobody else wants. The flood stands for a client on another machine,
    whose CPU is its own. nice alone does not do that here: the kernel groups
    a session's processes (autogroup) and weighs groups by their recent load,
    so a niced flood still took half a core from the engine's containers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path: Path | None = None

    def __enter__(self) -> IdleCgroup:
        for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")):
            if (root / "cpu.idle").exists() or (root / "cgroup.subtree_control").exists():
                path = root / self.name
                try:
                    path.mkdir(exist_ok=True)
                    (path / "cpu.idle").write_text("1")
                    (path / "cgroup.procs").write_text(str(os.getpid()))
                except OSError:
                    continue
                self.path = path
                break
        return self

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            (self.path.parent / "cgroup.procs").write_text(str(os.getpid()))
            self.path.rmdir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_mib(path: Path, *, skip: str = "") -> float:
    """MiB of the files under `path`, but those whose name starts with `skip`."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            if skip and name.startswith(skip):
                continue
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total / 2**20


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- The well-behaved client (its own address and its own process) -----------
# A process of its own, as another client is on another machine: a thread
# beside the flood's event loop would wait for this process's GIL, and count
# that as the herder's time.


def good_run(port: int) -> tuple[float, int, float | None]:
    """One hello world: (ms in all, status, the herder's own DurationMs for it:
    taking a container and running, to tell time in the container from time in
    front of it)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90, source_address=(GOOD_ADDRESS, 0))
    run = None
    parts: dict[str, float] = {}
    try:
        conn.request("POST", "/minion/v1/spawn", body=HELLO, headers=FORM)
        answer = conn.getresponse()
        body = answer.read()
        status = answer.status
        if status == 200:
            run = json.loads(body)["DurationMs"]
            for part in (answer.getheader("Server-Timing") or "").split(", "):
                name, _, ms = part.partition(";dur=")
                if ms:
                    parts[name] = float(ms)
    except OSError:
        status = 0
    finally:
        conn.close()
    total = (time.perf_counter() - started) * 1000
    if parts:
        parts["elsewhere"] = total - sum(parts.values())  # connecting, Django, answering
    return total, status, run, parts


def good_client(port: int, count: int | None, stop, out) -> None:
    """`count` runs one after another (or until `stop` with None, resting 50 ms
    between runs); puts its samples on `out`."""
    found = {"ms": [], "run_ms": [], "front_ms": [], "parts": [], "errors": Counter()}
    done = 0
    while (count is None and not stop.is_set()) or (count is not None and done < count):
        ms, status, run, parts = good_run(port)
        done += 1
        if status == 200:
            found["ms"].append(ms)
            found["run_ms"].append(run)
            found["front_ms"].append(ms - run)
            found["parts"].append(parts)
        else:
            found["errors"][status] += 1
        if count is None:
            time.sleep(0.05)
    out.put(found)


def good_session(port: int, count: int | None = None):
    """Starts the good client's process; returns (stop, collect)."""
    context = multiprocessing.get_context("fork")
    stop, out = context.Event(), context.Queue()
    process = context.Process(target=good_client, args=(port, count, stop, out), daemon=True)
    process.start()

    def collect() -> dict:
        stop.set()
        found = out.get(timeout=180)
        process.join(10)
        return found

    return stop, collect


# --- The flood (asyncio, from 127.0.0.1) --------------------------------------


async def http_once(
    port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 90
) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            head += f"{name}: {value}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    names = {line.split(b":", 1)[0].strip().lower().decode() for line in rest.split(b"\r\n\r\n")[0].split(b"\r\n")}
    return status, {"retry-after": "retry-after" in names}


class Tally:
    def __init__(self) -> None:
        self.codes: Counter[tuple[str, int]] = Counter()
        self.without_retry_after = 0

    def add(self, kind: str, status: int, retry_after: bool | None = False) -> None:
        """`retry_after` None: the answer was cut off after its status line."""
        self.codes[(kind, status)] += 1
        if status == 429 and retry_after is False:
            self.without_retry_after += 1


async def minion_flood(port: int, deadline: float, tally: Tally, pause: float, program: str) -> None:
    body = urllib.parse.urlencode({"env": "python", "main.py": FLOOD_PROGRAMS[program]}).encode()
    while time.monotonic() < deadline:
        try:
            status, info = await http_once(port, "POST", "/minion/v1/spawn", body, FORM)
        except (OSError, asyncio.TimeoutError):
            status, info = 0, {}
        tally.add("minion", status, info.get("retry-after", False))
        await asyncio.sleep(pause)


async def upload_flood(port: int, deadline: float, tally: Tally, path: str, gib: float = 1.0) -> None:
    """1 GiB chunked uploads to `path`, one after another; the answer is read
    while sending, since a herder that refuses stops reading and closes."""
    frame_body = b"x" * 65536
    frame = f"{len(frame_body):x}\r\n".encode() + frame_body + b"\r\n"
    frames = int(gib * 2**30 / len(frame_body))
    while time.monotonic() < deadline:
        status = -1  # cut off before an answer could be read
        retry_after = None  # unknown until its headers are read
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answer = asyncio.ensure_future(reader.readline())
            writer.write(
                f"POST {path} HTTP/1.1\r\n".encode() + b"Host: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
            )
            try:
                for _ in range(frames):
                    if answer.done() or time.monotonic() > deadline:
                        break
                    writer.write(frame)
                    await asyncio.wait_for(writer.drain(), 2)
            except (OSError, asyncio.TimeoutError):
                pass
            line = await asyncio.wait_for(answer, 5)
            if line:
                status = int(line.split()[1])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                retry_after = b"\nretry-after:" in head.lower()
        except (OSError, asyncio.TimeoutError, IndexError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer is not None:
                writer.close()
        tally.add(f"upload {path.split('/')[1]}", status, retry_after)


async def socket_flood(port: int, count: int, deadline: float, tally: Tally) -> None:
    """`count` sockets, each reconnecting half a second after it is refused or
    closed. The handshake is written as bytes (as a flood tool would): the
    websockets client's own handshake cost the bench more CPU than the herder's
    answer, CPU the herder's machine then lacked."""
    handshake = (
        "GET /minion/v1/connect/flood-{i}?type=flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    async def one(i: int) -> None:
        request = handshake.format(i=i % 97).encode()
        while time.monotonic() < deadline:
            writer = None
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status = int(head.split(None, 2)[1])
                tally.add("websocket", status, b"\nretry-after:" in head.lower())
                if status == 101:
                    # Held open (unpaired: the herder ends it after HERDER_GOLEM_WAIT).
                    with contextlib.suppress(asyncio.TimeoutError):
                        while await asyncio.wait_for(reader.read(65536), max(0.1, deadline - time.monotonic())):
                            pass
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError, ValueError):
                tally.add("websocket", 0)
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(0.5)

    await asyncio.gather(*(one(i) for i in range(count)))


async def golem_flood(port: int, count: int, tag: str, tally: Tally) -> None:
    async def one(i: int) -> None:
        try:
            status, info = await http_once(port, "GET", f"/golem/v1/spawn/{tag}-{i}", timeout=60)
        except (OSError, asyncio.TimeoutError):
            status, info = 0, {}
        tally.add("golem", status, info.get("retry-after", False))

    await asyncio.gather(*(one(i) for i in range(count)))


async def guess_flood(port: int, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        body = urllib.parse.urlencode({"password": secrets.token_hex(8), "email": "eve@bench.test"}).encode()
        try:
            status, info = await http_once(port, "POST", "/token/v1/generate", body, FORM, timeout=10)
        except (OSError, asyncio.TimeoutError):
            status, info = 0, {}
        tally.add("token", status, info.get("retry-after", False))
        await asyncio.sleep(0.01)


async def flood(port: int, args, tag: str, tally: Tally) -> None:
    deadline = time.monotonic() + args.seconds
    await asyncio.gather(
        *(minion_flood(port, deadline, tally, args.pause, args.program) for _ in range(args.runs)),
        # Half to minion spawn (its client at its limit there: refused at the
        # door), half to daemon spawn (the same body cap, no admission first).
        *(
            upload_flood(port, deadline, tally, ("/minion/v1/spawn", "/daemon/v1/spawn")[i % 2])
            for i in range(args.uploads)
        ),
        socket_flood(port, args.sockets, deadline, tally),
        golem_flood(port, args.golems, tag, tally),
        *(guess_flood(port, deadline, tally) for _ in range(args.guessers)),
    )


# --- The run ------------------------------------------------------------------


def herder_durations(log: Path, client: str, offset: int = 0) -> list[float]:
    """duration_ms of the minion spawns of `client` in the herd's request log,
    from byte `offset` on."""
    found = []
    with open(log, "rb") as lines:
        lines.seek(offset)
        text = lines.read().decode(errors="replace")
    for line in text.splitlines():
        if "http.request" in line and f"client={client}" in line and "route=minion-spawn" in line:
            for field in line.split():
                if field.startswith("duration_ms="):
                    found.append(float(field.split("=", 1)[1]))
    return found


def webstrates_stub() -> str:
    """A webstrates server on loopback that has none of the flood's invented
    webstrates (404), as a real one answers: golem spawns for them are refused."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NoSuchWebstrate(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NoSuchWebstrate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="how long the flood lasts")
    parser.add_argument("--quiet-runs", type=int, default=40)
    parser.add_argument("--runs", type=int, default=64, help="concurrent minion loops of the flood")
    parser.add_argument(
        "--program", choices=sorted(FLOOD_PROGRAMS), default="burn", help="what the flood's runs do for two seconds"
    )
    parser.add_argument("--pause", type=float, default=0.01, help="seconds a flood loop rests between runs")
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--uploads", type=int, default=4, help="concurrent 1 GiB chunked upload loops")
    parser.add_argument("--golems", type=int, default=50)
    parser.add_argument("--guessers", type=int, default=4)
    parser.add_argument(
        "--flood-nice", type=int, default=19, help="niceness of the flood's process (the herder and good client keep 0)"
    )
    parser.add_argument(
        "--flood-idle",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run the flood in a cgroup marked cpu.idle, when this machine allows it (the flood then "
        "gets only CPU nobody else wants, and asks far less often than it would from a machine of its own)",
    )
    args = parser.parse_args()

    instance = f"bench-abuse-{secrets.token_hex(4)}"
    webstrates = webstrates_stub()
    with tempfile.TemporaryDirectory(prefix="herder-bench-abuse-") as folder:
        data, tmp = Path(folder) / "data", Path(folder) / "tmp"
        data.mkdir()
        tmp.mkdir()
        env = {
            **os.environ,
            "HERDER_DATA_DIR": str(data),
            "TMPDIR": str(tmp),
            "HERDER_INSTANCE": instance,
            "HERDER_TOKEN_PASSWORD": secrets.token_hex(16),
            "HERDER_MINION_POOL_SIZE": "4",
            "HERDER_WEBSTRATES_URL": webstrates,
            "DJANGO_SETTINGS_MODULE": "herder.settings",
        }
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        port = free_port()
        herd = subprocess.Popen(
            [sys.executable, "manage.py", "herd", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(folder) / "herd.log", "wb"),
        )
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            good_session(port, 10)[1]()  # warm up: the pool fills, code paths load

            def where(found: dict) -> str:
                """p95 of each part of the good client's time (Server-Timing)."""
                names = [name for name in found["parts"][0]] if found["parts"] else []
                return ", ".join(f"{n} {pct([p.get(n, 0.0) for p in found['parts']], 0.95):.0f}" for n in names)

            quiet = good_session(port, args.quiet_runs)[1]()
            quiet_ms = quiet["ms"]
            quiet_p95 = pct(quiet_ms, 0.95)
            quiet_run_p95 = pct(quiet["run_ms"], 0.95)
            quiet_front_p95 = pct(quiet["front_ms"], 0.95)
            rss_before = rss_mib(herd.pid)

            # Bodies spooled, files left (the target: nothing), apart from the
            # database, where runs are recorded (their rows, its write-ahead log).
            def disk() -> float:
                return dir_mib(data, skip=DATABASE) + dir_mib(tmp)

            disk_before, database_before = disk(), dir_mib(data) - dir_mib(data, skip=DATABASE)
            print(
                f"quiet:  good client p50 {statistics.median(quiet_ms):6.1f} ms  p95 {quiet_p95:6.1f} ms "
                f"({len(quiet_ms)}/{args.quiet_runs} ok; p95 in the run {quiet_run_p95:.0f} ms, "
                f"in front of it {quiet_front_p95:.0f} ms); "
                f"herder RSS {rss_before:.0f} MiB"
            )

            stop = threading.Event()
            peaks = {"rss": rss_before, "disk": disk_before, "database": database_before}

            def sample() -> None:
                while not stop.is_set():
                    peaks["rss"] = max(peaks["rss"], rss_mib(herd.pid))
                    peaks["disk"] = max(peaks["disk"], disk())
                    peaks["database"] = max(peaks["database"], dir_mib(data) - dir_mib(data, skip=DATABASE))
                    time.sleep(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            tally = Tally()
            cpu_before = cpu_seconds(herd.pid)
            flood_offset = (Path(folder) / "herd.log").stat().st_size
            sampler.start()
            _, collect = good_session(port)
            # The attacker's CPU is its own, not the herder's machine's: on these
            # two cores the flood's event loop would otherwise take one from the
            # herder. (--flood-nice 0 keeps it; the counts below show the flood.)
            os.nice(args.flood_nice)
            started = time.monotonic()
            with IdleCgroup(f"{instance}-flood") if args.flood_idle else contextlib.nullcontext() as idle:
                # uvloop, as the herder: the flood's own CPU is not the herder's to lose.
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(flood(port, args, instance, tally))
            stop.set()
            good = collect()
            samples, errors = good["ms"], good["errors"]
            sampler.join(5)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(herd.pid) - cpu_before
            time.sleep(2)
            rss_after = rss_mib(herd.pid)
            disk_after = disk()
            # Quiet again once the flood's runs have ended: this machine's own
            # drift (its neighbours on the host) shows as the two differing, and
            # the target is twice the p95 of both.
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, 0, 0)  # the good client's process is forked from here
            after = good_session(port, args.quiet_runs)[1]()
            quiet_p95 = pct(quiet_ms + after["ms"], 0.95)
            fives = sum(n for (kind, status), n in tally.codes.items() if status >= 500)

            print(
                f"flood:  {elapsed:.0f} s: {args.runs} minion loops ({args.program}), {args.sockets} WebSockets, "
                f"{args.uploads} x 1 GiB chunked upload loops, {args.golems} golem spawns, "
                f"{args.guessers} password guessers; {sum(tally.codes.values()) / elapsed:.0f} requests/s "
                f"(its process at nice {args.flood_nice}"
                f"{', in an idle cgroup' if idle is not None and getattr(idle, 'path', None) else ''})"
            )
            print(
                f"after:  good client p50 {statistics.median(after['ms']):6.1f} ms  p95 {pct(after['ms'], 0.95):6.1f} ms "
                f"quiet again; p95 of both quiet phases {quiet_p95:.1f} ms"
            )
            print(
                f"good:   p50 {pct(samples, 0.5):6.1f} ms  p95 {pct(samples, 0.95):6.1f} ms "
                f"(target <= 2 x quiet p95 = {2 * quiet_p95:.1f} ms); {len(samples)} ok, "
                f"errors {dict(errors) or 0}; p95 in the run {pct(good['run_ms'], 0.95):.0f} ms, "
                f"in front of it {pct(good['front_ms'], 0.95):.0f} ms"
            )
            print(f"        where the time went, p95 of each part (ms): quiet: {where(quiet)}")
            print(f"                                                   flood: {where(good)}")
            print(
                f"herder: RSS {rss_before:.0f} -> peak {peaks['rss']:.0f} -> {rss_after:.0f} MiB "
                f"(growth {peaks['rss'] - rss_before:+.0f} MiB peak, target <= 150)"
            )
            requests = sum(tally.codes.values())
            print(
                f"herder: CPU {cpu:.1f} s in {elapsed:.0f} s ({cpu / elapsed * 100:.0f} % of a core) "
                f"for {requests} flood requests ({cpu / max(requests, 1) * 1000:.2f} ms each)"
            )
            print(
                f"disk:   data + tmp {disk_before:.1f} -> peak {peaks['disk']:.1f} -> {disk_after:.1f} MiB "
                f"(target: no growth); the database (runs recorded, its write-ahead log) "
                f"{database_before:.1f} -> peak {peaks['database']:.1f} MiB"
            )
            for kind in ("minion", "upload minion", "upload daemon", "websocket", "golem", "token"):
                codes = {status: n for (k, status), n in sorted(tally.codes.items()) if k == kind}
                print(f"flood {kind:13s} {codes}")
            if os.environ.get("ABUSE_VERBOSE"):
                print(
                    "good samples (total, run):", [(round(a), b) for a, b in zip(samples, good["run_ms"], strict=False)]
                )
            print(f"429s without Retry-After: {tally.without_retry_after}; 5xx: {fives}")
            inside = herder_durations(Path(folder) / "herd.log", GOOD_ADDRESS, flood_offset)
            if inside:
                # The herder's own time (its request log: from the request's
                # first layer to its answer) against the client's: the rest is
                # waiting to be accepted and read.
                print(
                    f"good client, by the herder's log: p50 {pct(inside, 0.5):.1f} ms  p95 {pct(inside, 0.95):.1f} ms "
                    f"({len(inside)} requests under the flood)"
                )
        finally:
            herd.send_signal(signal.SIGTERM)
            try:
                herd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                herd.kill()
            # Golems outlive their herder on purpose: remove this run's.
            ids = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=herder.instance={instance}"], capture_output=True, text=True
            ).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
                print(f"removed {len(ids)} containers of this run")


if __name__ == "__main__":
    main()
