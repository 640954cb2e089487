"""Several herder processes on one PostgreSQL database and one Redis: two `herd`
processes, then two workers of one `herd`. Pairing, minion runs, a worker
killed with -9, SIGTERM draining every worker, the supervisor lease moving when
its holder dies, metering across that failover, and group renewal.

Each test gets a database of its own (herder_test_<random>, dropped after) and
a Redis database number of its own choosing (HERDER_TEST_WORKERS_REDIS_DB,
default 12), flushed before it runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest
import redis
from websockets.sync.client import connect

from herder.runtime import LABEL_INSTANCE, get_runtime
from herder.settings import _default_minion_slots
from tests.golems.conftest import free_port, wait_for_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = os.environ.get("HERDER_TEST_POSTGRES_URL", "postgres://herder:herder@127.0.0.1:5432/postgres")
INTERVAL = 1.0  # the supervisor's, in these tests
ECHO = "herder/daemon-echo:latest"


def _redis_url() -> str:
    base = os.environ.get("HERDER_TEST_REDIS_URL")
    if not base:
        pytest.fail("HERDER_TEST_REDIS_URL is not set: start Redis (deploy/start-services.sh) and export it.")
    parts = urllib.parse.urlsplit(base)
    db = os.environ.get("HERDER_TEST_WORKERS_REDIS_DB", "12")
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


class Herd:
    """A `manage.py herd` process on a free port, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path, *, workers: int, server: str = "uvicorn") -> None:
        self.port = free_port()
        self.log = log
        self._log_file = open(log, "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "herd",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--server",
                server,
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        wait_for_port("127.0.0.1", self.port, process=self.process, seconds=30)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(pid) for pid in text.split()]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()


class Deployment:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.database = f"herder_test_{uuid.uuid4().hex[:12]}"
        self.instance = f"herder-test-{uuid.uuid4().hex[:8]}"
        self.redis_url = _redis_url()
        redis.Redis.from_url(self.redis_url).flushdb()
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self.database_url = urllib.parse.urlunsplit(urllib.parse.urlsplit(POSTGRES)._replace(path=f"/{self.database}"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDER_", "DATABASE_URL", "REDIS_URL"))}
        env.update(
            DJANGO_SETTINGS_MODULE="herder.settings",
            PYTHONUNBUFFERED="1",
            HERDER_DATA_DIR=str(tmp_path / "data"),
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            HERDER_INSTANCE=self.instance,
            HERDER_LOG_LEVEL="INFO",
            HERDER_SUPERVISOR_INTERVAL=str(INTERVAL),
            HERDER_PAIRING_HEARTBEAT="0.5",
            HERDER_GOLEM_WAIT="10",
            HERDER_GOLEM_CHECK_EXISTS="false",
            HERDER_MINION_POOL_SIZE="0",
            HERDER_DAEMON_IMAGES=ECHO,
        )
        self.env = env
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        self.herds: list[Herd] = []

    def start(self, name: str, *, workers: int = 1, server: str = "uvicorn", **extra: str) -> Herd:
        herd = Herd({**self.env, **extra}, self.tmp_path / f"herd-{name}.log", workers=workers, server=server)
        self.herds.append(herd)
        return herd

    def query(self, sql: str, *args):
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            return connection.execute(sql, args).fetchall()

    def close(self) -> None:
        for herd in self.herds:
            herd.stop()
        runtime = get_runtime()
        for info in runtime.list():
            if info.labels.get(LABEL_INSTANCE) == self.instance:
                runtime.remove(info.handle)
        # Daemons' networks too: the engine's address pools hold few of them.
        for network in runtime.networks():
            if network.labels.get(LABEL_INSTANCE) == self.instance:
                runtime.network_remove(network.name)
        try:
            for (volume,) in self.query("SELECT volume FROM daemons_daemon"):
                runtime.remove_volume(volume)
        finally:
            with psycopg.connect(POSTGRES, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            redis.Redis.from_url(self.redis_url).flushdb()
        for herd in self.herds:
            print(f"--- herd {herd.pid} on port {herd.port}\n{herd.text()[-6000:]}")


@pytest.fixture
def deployment(tmp_path, docker_engine):
    deployment = Deployment(tmp_path)
    try:
        yield deployment
    finally:
        deployment.close()


# --- clients -----------------------------------------------------------------


def event(ws, timeout: float = 10) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def get(url: str, **headers) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(url: str, fields: dict, **headers) -> tuple[int, dict]:
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def run_minion(herd: Herd, text: str) -> tuple[int, dict]:
    return post(
        f"{herd.http}/minion/v1/spawn",
        {"env": "python", "main.py": f"print({text!r})"},
        Referer="http://webstrates.test/herder-test-workers/",
    )


def pair_and_relay(control_at: Herd, minion_at: Herd, golem_at: Herd, webstrate: str, minions: int = 1) -> None:
    """A golem's control socket on one, `minions` ad-hoc minions on another, the
    golem's sockets to them on a third: each pair relays both ways."""
    with ExitStack() as sockets:
        control = sockets.enter_context(connect(f"{control_at.ws}/golem/v1/connect/{webstrate}"))
        for _ in range(minions):
            minion = sockets.enter_context(connect(f"{minion_at.ws}/minion/v1/connect/{webstrate}?type=python"))
            connected = event(control)
            assert connected["Event"] == "minion-connected"
            golem = sockets.enter_context(connect(f"{golem_at.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}"))
            assert event(minion) == {"Event": "golem-connected"}
            minion.send("to the golem")
            assert golem.recv(timeout=10) == "to the golem"
            golem.send(b"\x00to the minion")
            assert minion.recv(timeout=10) == b"\x00to the minion"


def lease_takers(herd: Herd) -> list[int]:
    return [int(pid) for pid in re.findall(r"supervisor lease taken by process (\d+)", herd.text())]


def wait_for(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def mint(deployment: Deployment, credits: int) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", "mint_token", "-e", "herder-test@workers.test", "-c", str(credits)],
        cwd=ROOT,
        env=deployment.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# --- two herd processes ------------------------------------------------------


def test_two_herd_processes_pair_run_and_hand_the_lease_on(deployment):
    a = deployment.start("a")
    b = deployment.start("b")
    pair_and_relay(a, b, a, f"herder-test-two-{uuid.uuid4().hex[:6]}")
    for herd in (a, b):
        status, answer = run_minion(herd, f"on {herd.port}")
        assert status == 200 and answer["StdOut"] == f"on {herd.port}\n"

    # One supervisor over both.
    assert wait_for(lambda: lease_takers(a) + lease_takers(b), 30)  # started
    time.sleep(2 * INTERVAL)
    [leader] = lease_takers(a) + lease_takers(b)
    survivor = b if leader == a.pid else a
    killed = a if survivor is b else b

    killed.stop(kill=True)
    started = time.monotonic()
    assert wait_for(lambda: survivor.pid in lease_takers(survivor), 4 * INTERVAL)
    # Within two intervals (the survivor tries once per interval), plus this poll's slack.
    assert time.monotonic() - started <= 2 * INTERVAL + 0.5


def test_metering_across_a_failover_charges_every_second_once(deployment):
    token = mint(deployment, 1_000_000)
    a = deployment.start("a")
    b = deployment.start("b")
    assert wait_for(lambda: lease_takers(a) + lease_takers(b), 30)  # started
    [leader] = lease_takers(a) + lease_takers(b)
    first, second = (a, b) if leader == a.pid else (b, a)

    status, answer = post(
        f"{second.http}/daemon/v1/spawn",
        {"name": "metered", "image": ECHO, "ports": '["8080"]'},
        Authorization=f"Bearer {token}",
    )
    assert status == 200, answer
    time.sleep(3 * INTERVAL)
    first.stop(kill=True)  # the leader, mid-metering for all we know
    assert wait_for(lambda: second.pid in lease_takers(second), 4 * INTERVAL)
    time.sleep(4 * INTERVAL)

    # One statement, one snapshot: the supervisor goes on charging meanwhile.
    [(started, metered_until, used, now, charged, entries)] = deployment.query(
        "SELECT started, metered_until, credits_used, now(),"
        " (SELECT -COALESCE(SUM(amount), 0) FROM accounts_creditentry WHERE subject = d.full_name),"
        " (SELECT COUNT(*) FROM accounts_creditentry WHERE subject = d.full_name)"
        " FROM daemons_daemon d"
    )
    seconds = (metered_until - started).total_seconds()
    assert seconds == int(seconds)
    # Every charged second is in the ledger once, and the daemon's mark agrees.
    assert charged == used == int(seconds) * 1
    # Nothing skipped over the failover (the mark trails now by at most an
    # interval plus the one the lease took to move) and nothing charged twice
    # (never more seconds than have passed).
    elapsed = (now - started).total_seconds()
    assert elapsed - 3 * INTERVAL - 1 <= seconds <= elapsed
    # One row per hour: both leaders grew the same row (two only when an hour
    # began meanwhile), the unique (account, subject, hour) keeping a second out.
    assert 1 <= entries <= 2


# --- workers of one herd --------------------------------------------------------


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_two_workers_pair_and_run(deployment, server):
    herd = deployment.start("w", workers=2, server=server)
    assert wait_for(lambda: len(herd.children()) == 2, 30)
    # Which worker takes a connection is the kernel's choice: with six pairs, on
    # Daphne a pair across workers is all but certain (1 - 2**-11); on uvicorn
    # the golem's socket is then handed to its minion's worker.
    pair_and_relay(herd, herd, herd, f"herder-test-workers-{uuid.uuid4().hex[:6]}", minions=6)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: run_minion(herd, f"run {i}"), range(8)))
    assert [(status, answer.get("StdOut")) for status, answer in answers] == [(200, f"run {i}\n") for i in range(8)]
    # One supervisor over both workers.
    assert wait_for(lambda: lease_takers(herd), 30)  # started
    time.sleep(2 * INTERVAL)
    assert len(lease_takers(herd)) == 1 and lease_takers(herd)[0] in herd.children()
    # The machine's totals are the herd's: each worker holds half.
    status, body = get(f"{herd.http}/pressure")
    assert status == 200
    assert json.loads(body)["minions"]["max_running"] == -(-_default_minion_slots() // 2)


def serving_process(port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the server's end of our connection from `client_port`."""
    held = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, inode = line.split()[1], line.split()[2], line.split()[9]
            if int(local.rsplit(":", 1)[1], 16) == port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                held.add(f"socket:[{inode}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in held:
                    return pid
            except OSError:
                pass  # closed meanwhile
    return None


def handed_over(herd: Herd) -> float:
    status, body = get(f"{herd.http}/metrics")
    assert status == 200
    found = re.search(rb"^herder_websockets_handed_over_total (\S+)$", body, re.M)
    return float(found[1]) if found else 0.0


def test_a_golem_socket_is_served_by_its_minions_worker(deployment):
    # The kernel gives each connection to whichever worker accepts first; the
    # golem's socket to a minion is passed to the minion's worker before its
    # handshake (herder/handoff.py), so the pair relays within one process. The
    # minion's worker is stopped while the golem connects, so that the other one
    # surely accepts it.
    herd = deployment.start("w", workers=2)
    assert wait_for(lambda: len(herd.children()) == 2, 30)
    webstrate = f"herder-test-handoff-{uuid.uuid4().hex[:6]}"
    workers = herd.children()
    with ExitStack() as sockets, ThreadPoolExecutor(1) as pool:
        control = sockets.enter_context(connect(f"{herd.ws}/golem/v1/connect/{webstrate}"))
        for i in range(4):
            minion = sockets.enter_context(connect(f"{herd.ws}/minion/v1/connect/{webstrate}?type=python"))
            connected = event(control)
            minion_at = serving_process(herd.port, minion.local_address[1], workers)
            assert minion_at in workers
            handed = handed_over(herd)
            os.kill(minion_at, signal.SIGSTOP)
            try:
                golem = pool.submit(connect, f"{herd.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}")
                assert wait_for(
                    lambda handed=handed: handed_over(herd) == handed + 1, 10
                )  # answered by the other worker
            finally:
                os.kill(minion_at, signal.SIGCONT)
            golem = sockets.enter_context(golem.result(timeout=10))
            assert event(minion) == {"Event": "golem-connected"}
            assert serving_process(herd.port, golem.local_address[1], workers) == minion_at
            minion.send(f"to the golem {i}")
            assert golem.recv(timeout=10) == f"to the golem {i}"
            golem.send(f"to the minion {i}")
            assert minion.recv(timeout=10) == f"to the minion {i}"


def test_a_worker_killed_with_9_while_the_other_serves(deployment):
    herd = deployment.start("w", workers=2)
    assert wait_for(lambda: len(herd.children()) == 2, 30)
    assert wait_for(lambda: lease_takers(herd), 30)  # started
    [leader] = lease_takers(herd)
    before = set(herd.children())

    os.kill(leader, signal.SIGKILL)
    killed_at = time.monotonic()
    assert wait_for(lambda: not alive(leader), 5)
    # The other keeps serving at once: every request answered, none refused.
    answers = [get(f"{herd.http}/")[0] for _ in range(30)]
    assert answers == [200] * 30
    # The lease moves to another worker within two intervals...
    assert wait_for(lambda: [pid for pid in lease_takers(herd) if pid != leader], 4 * INTERVAL)
    assert time.monotonic() - killed_at <= 2 * INTERVAL + 0.5
    # ...and the parent starts a worker in the dead one's place.
    assert wait_for(lambda: len([p for p in herd.children() if alive(p)]) == 2 and set(herd.children()) != before, 15)
    status, answer = run_minion(herd, "after the kill")
    assert status == 200 and answer["StdOut"] == "after the kill\n"
    pair_and_relay(herd, herd, herd, f"herder-test-killed-{uuid.uuid4().hex[:6]}", minions=3)


def test_sigterm_drains_every_worker(deployment):
    # One client's six runs may all land on one worker (the shared socket does not
    # deal connections evenly): neither its per-client limit nor that worker's
    # half of the herd's total may queue any of them.
    herd = deployment.start("w", workers=2, HERDER_MINION_MAX_PER_CLIENT="8", HERDER_MINION_MAX_RUNNING="16")
    assert wait_for(lambda: len(herd.children()) == 2, 30)
    workers = herd.children()
    runtime = get_runtime()

    def ours() -> list:
        return [info for info in runtime.list(kind="minion") if info.labels.get(LABEL_INSTANCE) == deployment.instance]

    # Six runs that would last a minute, usually spread over both workers.
    with ThreadPoolExecutor(6) as pool:
        pending = [
            pool.submit(
                post,
                f"{herd.http}/minion/v1/spawn",
                {"env": "python", "main.py": "import time; time.sleep(60)"},
                Referer="http://webstrates.test/herder-test-drain/",
            )
            for _ in range(6)
        ]
        assert wait_for(lambda: len(ours()) == 6, 30), "the runs never started"

        herd.process.send_signal(signal.SIGTERM)

        assert herd.process.wait(30) == 0
        # Every run ended (its container removed), far sooner than its minute.
        assert wait_for(lambda: not ours(), 10)
        assert not [pid for pid in workers if alive(pid)]
        for future in pending:
            future.result(timeout=30)  # answered or cut off, but not left hanging


def test_workers_refused_without_redis(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDER_", "DATABASE_URL", "REDIS_URL"))}
    env.update(HERDER_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="herder.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "herd", "--workers", "2", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--workers above 1 needs REDIS_URL" in result.stderr


# --- long-lived sockets ------------------------------------------------------------


def test_a_minion_connected_past_the_group_expiry_is_still_found(deployment):
    """channels-redis drops group members after group_expiry: a minion that
    renews its memberships is still found by a golem long after."""
    a = deployment.start("a", HERDER_GROUP_EXPIRY="2")
    b = deployment.start("b", HERDER_GROUP_EXPIRY="2")
    webstrate = f"herder-test-expiry-{uuid.uuid4().hex[:6]}"
    with (
        connect(f"{a.ws}/golem/v1/connect/{webstrate}") as control,
        connect(f"{b.ws}/minion/v1/connect/{webstrate}?type=python") as minion,
    ):
        connected = event(control)
        time.sleep(6)  # three expiries
        with connect(f"{a.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}") as golem:
            assert event(minion) == {"Event": "golem-connected"}
            minion.send("still here")
            assert golem.recv(timeout=10) == "still here"
    # A golem arriving later still reaches a minion waiting all along (the waiting group).
    with connect(f"{b.ws}/minion/v1/connect/{webstrate}?type=late") as minion:
        time.sleep(6)
        with connect(f"{a.ws}/golem/v1/connect/{webstrate}") as control:
            announced = event(control)
            assert announced["Event"] == "minion-connected" and announced["Type"] == "late"


def test_on_sqlite_the_file_lease_moves_when_its_holder_is_killed(tmp_path):
    """Two herd processes on one SQLite file: the flock in the data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDER_", "DATABASE_URL", "REDIS_URL"))}
    env.update(
        DJANGO_SETTINGS_MODULE="herder.settings",
        PYTHONUNBUFFERED="1",
        HERDER_DATA_DIR=str(tmp_path / "data"),
        HERDER_INSTANCE=f"herder-test-{uuid.uuid4().hex[:8]}",
        HERDER_LOG_LEVEL="INFO",
        HERDER_SUPERVISOR_INTERVAL=str(INTERVAL),
        HERDER_MINION_POOL_SIZE="0",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    herds = [Herd(env, tmp_path / f"herd-{name}.log", workers=1) for name in "ab"]
    try:
        assert wait_for(lambda: sum(map(lease_takers, herds), []), 30)  # started
        time.sleep(2 * INTERVAL)
        [leader] = sum(map(lease_takers, herds), [])
        [survivor] = [herd for herd in herds if herd.pid != leader]
        os.kill(leader, signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(lambda: survivor.pid in lease_takers(survivor), 4 * INTERVAL)
        assert time.monotonic() - killed_at <= 2 * INTERVAL + 0.5
    finally:
        for herd in herds:
            herd.stop()
