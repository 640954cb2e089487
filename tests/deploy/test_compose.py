"""The herder deployed on one host from deploy/compose.yml.

One fixture (module scope) brings the deployment up with the repository's
own command (deploy/compose-up.sh, under the Compose tool this host has: the
`docker compose` plugin or Debian's docker-compose) as a project of its own
(herder-test-compose-<hex>) on free ports (never the machine's 5432 and 6379),
with 2 workers and no warm pool (a run starts one container, and no more), and
removes all of it at the end: `down --volumes`, then by label whatever is
left (containers, the herder's minions, networks, volumes). Its secrets are
files in a temporary folder, removed too. A run killed outright leaves its
project behind: the next run removes it first (one such test at a time, under
a lock, so a project of that prefix is never a live one).
"""

import fcntl
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
LOCK = "/tmp/herder-test-compose.lock"
PREFIX = "herder-test-compose-"
PROJECT_LABEL = "com.docker.compose.project"


# The variables deploy/compose.yml reads: only the test's own values reach it,
# never this suite's (its HERDER_PUBLIC_URL, HERDER_DAEMON_IMAGES, ...).
COMPOSE_VARIABLES = set(re.findall(r"\$\{(\w+)", (ROOT / "deploy/compose.yml").read_text()))


def base_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in COMPOSE_VARIABLES}


def sh(*args: str, check: bool = True, env: dict | None = None, timeout: float = 900) -> str:
    done = subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False, env={**base_env(), **(env or {})}
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout.strip()


def wait_until(predicate, seconds: float, step: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(name: str) -> dict[str, list[str]]:
    """What the engine still holds of project `name`: Compose's containers,
    networks and volumes, and the herder's own containers (minions)."""
    by_project = ("--filter", f"label={PROJECT_LABEL}={name}")
    return {
        "containers": sh("docker", "ps", "-aq", *by_project, check=False).split()
        + sh("docker", "ps", "-aq", "--filter", f"label=herder.instance={name}", check=False).split(),
        "networks": sh("docker", "network", "ls", "-q", *by_project, check=False).split(),
        "volumes": sh("docker", "volume", "ls", "-q", *by_project, check=False).split(),
    }


def remove_project(name: str) -> None:
    """Remove by label what `down` did not (or a run killed outright left)."""
    found = leftovers(name)
    if found["containers"]:
        sh("docker", "rm", "-f", "-v", *found["containers"], check=False)
    for network in found["networks"]:
        sh("docker", "network", "rm", network, check=False)
    if found["volumes"]:
        sh("docker", "volume", "rm", "-f", *found["volumes"], check=False)


def stale_projects() -> set[str]:
    names = set()
    for kind in ("ps -a", "network ls", "volume ls"):
        listed = sh(
            "docker", *kind.split(), "--filter", f"label={PROJECT_LABEL}", "--format",
            f'{{{{.Label "{PROJECT_LABEL}"}}}}', check=False,
        )  # fmt: skip
        names.update(n for n in listed.split() if n.startswith(PREFIX))
    return names


class Deployment:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.env = name, env
        self.port = int(env["HERDER_PORT"])

    def compose(self, *args: str, check: bool = True) -> str:
        return sh("bash", "deploy/compose.sh", *args, env=self.env, check=check)

    def container(self, service: str) -> str:
        """The service's container, by the labels both Compose tools set
        (a `docker ps`: far quicker than starting the Compose tool)."""
        return sh(
            "docker", "ps", "-q", "--filter", f"label={PROJECT_LABEL}={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip

    def health(self, service: str) -> str:
        return sh("docker", "inspect", "-f", "{{.State.Health.Status}}", self.container(service))

    def herd_pid(self) -> int:
        """The herd parent: the herder container's PID 1 (its entrypoint execs herd)."""
        return int(sh("docker", "inspect", "-f", "{{.State.Pid}}", self.container("herder")))

    def workers(self) -> list[int]:
        pid = self.herd_pid()
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def owner(self, connection: http.client.HTTPConnection) -> int | None:
        """Which worker holds the server's end of this connection: the herder
        shares the host's network, so its sockets are in this /proc/net/tcp;
        the worker is the one with that socket's inode among its descriptors."""
        client_port = connection.sock.getsockname()[1]
        inodes = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == self.port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                if state == "01":  # ESTABLISHED
                    inodes.add(f"socket:[{inode}]")
        for worker in self.workers():
            for fd in Path(f"/proc/{worker}/fd").iterdir():
                try:
                    if os.readlink(fd) in inodes:
                        return worker
                except OSError:
                    continue
        return None

    def minions(self) -> list[str]:
        return sh("docker", "ps", "-aq", "--filter", f"label=herder.instance={self.name}").split()


def call(
    connection: http.client.HTTPConnection, method: str, path: str, fields: dict | None = None
) -> tuple[int, bytes]:
    body = None
    headers = {}
    if fields is not None:
        from urllib.parse import urlencode

        body = urlencode(fields)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    return answer.status, answer.read()


def diagnose(deployment: Deployment) -> str:
    lines = [deployment.compose("ps", check=False)]
    for service in ("herder", "postgres", "redis"):
        container = deployment.container(service)
        if container:
            done = subprocess.run(["docker", "logs", "--tail", "30", container], capture_output=True, text=True)
            lines.append(f"--- {service}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one compose test at a time on this engine
    for stale in stale_projects():
        remove_project(stale)
    name = f"{PREFIX}{secrets.token_hex(4)}"
    secrets_dir = tmp_path_factory.mktemp("compose-secrets")
    ports = set()
    while len(ports) < 3:
        ports.add(free_port())
    herder_port, pg_port, redis_port = sorted(ports)
    env = {
        "HERDER_STACK": name,
        "HERDER_INSTANCE": name,
        "HERDER_SECRETS_DIR": str(secrets_dir),
        "HERDER_PORT": str(herder_port),
        "HERDER_PG_PORT": str(pg_port),
        "HERDER_REDIS_PORT": str(redis_port),
        "HERDER_WORKERS": "2",
        "HERDER_MINION_POOL_SIZE": "0",
        "HERDER_COMPOSE_WAIT": "240",
    }
    deployment = Deployment(name, env)
    try:
        done = subprocess.run(
            ["bash", "deploy/compose-up.sh"],
            cwd=ROOT,
            env={**base_env(), **env},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{diagnose(deployment)}"
        yield deployment
    finally:
        deployment.compose("down", "--volumes", "--remove-orphans", "--timeout", "40", check=False)
        remove_project(name)
        shutil.rmtree(secrets_dir, ignore_errors=True)
        left = leftovers(name)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        assert not any(left.values()), left


def test_healthy_and_ready(deployment):
    for service in ("postgres", "redis", "herder"):
        assert deployment.health(service) == "healthy", service
    # PostgreSQL and Redis on the ports asked for, on loopback only.
    for service, port, variable in (("postgres", 5432, "HERDER_PG_PORT"), ("redis", 6379, "HERDER_REDIS_PORT")):
        published = sh("docker", "port", deployment.container(service), f"{port}/tcp").splitlines()
        assert published == [f"127.0.0.1:{deployment.env[variable]}"], (service, published)
    connection = http.client.HTTPConnection("127.0.0.1", deployment.port, timeout=30)
    status, body = call(connection, "GET", "/readyz")
    assert status == 200, body
    checks = json.loads(body)["checks"]
    assert {name: check["ok"] for name, check in checks.items()} == {
        "database": True,
        "channel_layer": True,
        "engine": True,
        "images": True,
    }
    # The database it is ready on is the deployment's own: the herder migrated it.
    migrated = sh(
        "docker", "exec", deployment.container("postgres"), "su", "postgres", "-s", "/bin/sh", "-c",
        '/usr/lib/postgresql/15/bin/psql -h /run/postgresql -XAtq -d herder -c "SELECT count(*) FROM django_migrations"',
    )  # fmt: skip
    assert int(migrated) > 0


def test_secrets_reach_the_herder_as_files_only(deployment):
    config = json.loads(sh("docker", "inspect", deployment.container("herder")))[0]
    environment = "\n".join(config["Config"]["Env"])
    secrets_dir = Path(deployment.env["HERDER_SECRETS_DIR"])
    for secret in ("postgres_password", "secret_key", "token_password"):
        value = (secrets_dir / secret).read_text()
        assert value and value not in environment, secret
    assert "HERDER_SECRET_KEY_FILE=/run/secrets/secret_key" in environment
    # compose-up.sh derived the public URL from the port (Compose v1 cannot nest defaults).
    assert f"HERDER_PUBLIC_URL=http://127.0.0.1:{deployment.port}" in environment.splitlines()
    mounts = {m["Destination"]: m for m in config["Mounts"]}
    assert mounts["/run/secrets/token_private_key"]["Source"] == str(secrets_dir / "token_private_key")
    assert "/var/run/docker.sock" in mounts
    assert config["HostConfig"]["NetworkMode"] == "host"


def test_two_workers_serve_and_run_minions(deployment):
    workers = deployment.workers()
    assert len(workers) == 2, workers
    # Connections until each worker holds one (which worker accepts is the
    # kernel's choice: all on one for 40 in a row is a broken balance).
    held: dict[int, http.client.HTTPConnection] = {}
    opened = []
    try:
        for _ in range(40):
            connection = http.client.HTTPConnection("127.0.0.1", deployment.port, timeout=60)
            opened.append(connection)
            assert call(connection, "GET", "/healthz")[0] == 200
            held.setdefault(deployment.owner(connection), connection)
            if set(held) >= set(workers):
                break
        assert set(held) == set(workers), (list(held), workers)

        # Each worker runs a python minion, on the deployment's engine.
        for pid, connection in held.items():
            status, body = call(
                connection, "POST", "/minion/v1/spawn", {"env": "python", "main.py": f"print({pid} * 2)"}
            )
            assert status == 200, body
            assert json.loads(body)["StdOut"] == f"{pid * 2}\n"
            assert deployment.owner(connection) == pid  # the same connection, the same worker

        # Two runs, two containers, none kept warm: nothing of ours is left running.
        assert wait_until(lambda: not deployment.minions(), 30), deployment.minions()

        # /metrics sums every worker's samples, whichever answers.
        for connection in held.values():
            status, body = call(connection, "GET", "/metrics")
            assert status == 200, body
            runs = re.search(rb'^herder_minion_runs_total\{env="python",outcome="ok"\} (\S+)$', body, re.M)
            assert runs and float(runs.group(1)) == 2.0, body[-2000:]
    finally:
        for connection in opened:
            connection.close()
