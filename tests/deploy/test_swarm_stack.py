"""The herder deployed on a single-node Docker Swarm from deploy/stack.yml.

One fixture (module scope) makes a swarm on 127.0.0.1, deploys the stack under
a name of its own (herder-test-<hex>: services, overlay network, volume,
secrets) with two herder replicas on PostgreSQL and Redis, and removes all of
it at the end, leaving the swarm (and the docker_gwbridge it made).

The host cannot reach overlay addresses, so a relay container on the overlay
(deploy/herder/relay.py) gives each replica a port of its own on 127.0.0.1:
port A reaches the first task of the herder service, port B the second.
"""

import fcntl
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from herder.lease import ADVISORY_KEY

pytestmark = [pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
LOCK = "/tmp/herder-test-swarm.lock"


def sh(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False, env={**os.environ, **(env or {})}
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


def request(
    port: int, path: str, *, data: dict | None = None, method: str | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class Stack:
    def __init__(self, name: str, ports: dict[str, int], token_password: str, front: int) -> None:
        self.name, self.ports, self.token_password, self.front = name, ports, token_password, front

    def both_answer(self) -> bool:
        """Both replicas serve (after one was killed, its successor takes a moment)."""
        return bool(
            wait_until(
                lambda: all(request(p, "/golem/v1/ls", timeout=5)[0] == 200 for p in self.ports.values()), 120, 1
            )
        )

    def containers(self, service: str) -> list[str]:
        return sh(
            "docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.name}_{service}"
        ).split()

    def address(self, container: str) -> str:
        return sh(
            "docker", "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{self.name}").IPAddress}}}}', container
        )

    def lease_holder(self) -> str:
        """The overlay address of the herder process holding the supervisor's
        lease (herder/lease.py: a PostgreSQL session advisory lock)."""
        key = ADVISORY_KEY & 0xFFFFFFFFFFFFFFFF
        query = (
            "SELECT a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {key >> 32} "
            f"AND l.objid = {key & 0xFFFFFFFF} AND l.objsubid = 1"
        )
        postgres = self.containers("postgres")[0]
        return sh(
            "docker",
            "exec",
            postgres,
            "su",
            "postgres",
            "-s",
            "/bin/sh",
            "-c",
            f'/usr/lib/postgresql/15/bin/psql -h /run/postgresql -p 5432 -XAtq -d herder -c "{query}"',
            check=False,
        )

    def services(self, kind: str) -> list[dict]:
        ids = sh(
            "docker",
            "service",
            "ls",
            "-q",
            "--filter",
            f"label=herder.kind={kind}",
            "--filter",
            f"label=herder.instance={self.name}",
        ).split()
        return json.loads(sh("docker", "service", "inspect", *ids)) if ids else []


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one swarm test at a time on this engine
    if sh("docker", "info", "--format", "{{.Swarm.LocalNodeState}}") != "inactive":
        fcntl.flock(lock, fcntl.LOCK_UN)
        pytest.skip("this engine is already part of a swarm that this test does not own")
    sh("bash", "deploy/build-images.sh", "daemon-echo", "minion-python", "golem")
    sh("bash", "deploy/build-herder-image.sh")

    name = f"herder-test-{secrets.token_hex(4)}"
    secrets_dir = tmp_path_factory.mktemp("swarm-secrets")
    had_gwbridge = bool(sh("docker", "network", "ls", "-q", "--filter", "name=^docker_gwbridge$"))
    relay = f"{name}-relay"
    front_port = free_port()
    env = {
        "HERDER_SECRETS_DIR": str(secrets_dir),
        "HERDER_SWARM_NETWORK": name,
        "HERDER_INSTANCE": name,
        "HERDER_PORT": str(front_port),
        "HERDER_REPLICAS": "2",
        # No webstrates server here: the golem's page never loads, its service runs all the same.
        "HERDER_GOLEM_CHECK_EXISTS": "false",
    }
    sh("bash", "deploy/secrets.sh", env=env)
    sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
    try:
        sh("docker", "stack", "deploy", "-c", "deploy/stack.yml", name, env=env)
        sh(
            "docker",
            "run",
            "-d",
            "--name",
            relay,
            "--network",
            name,
            "--label",
            f"herder.instance={name}",
            "-p",
            "127.0.0.1::9001",
            "-p",
            "127.0.0.1::9002",
            "--entrypoint",
            "python3",
            "herder/herder:latest",
            "/app/deploy/herder/relay.py",
            "9001=tasks.herder:8000#0",
            "9002=tasks.herder:8000#1",
        )
        ports = {
            key: int(sh("docker", "port", relay, f"{port}/tcp").splitlines()[0].rsplit(":", 1)[1])
            for key, port in (("a", 9001), ("b", 9002))
        }
        up = wait_until(lambda: all(request(p, "/golem/v1/ls", timeout=5)[0] == 200 for p in ports.values()), 240, 2)
        assert up, diagnose(name)
        yield Stack(name, ports, (secrets_dir / "token_password").read_text(), front_port)
    finally:
        _teardown(name, relay, had_gwbridge)
        fcntl.flock(lock, fcntl.LOCK_UN)


def diagnose(name: str) -> str:
    """The stack's tasks and the last lines of each of its containers' output."""
    lines = [sh("docker", "stack", "ps", "--no-trunc", name, check=False)]
    for container in sh(
        "docker", "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={name}", check=False
    ).split():
        done = subprocess.run(
            ["docker", "logs", "--tail", "25", container], capture_output=True, text=True, check=False
        )
        lines.append(f"--- {container}\n{done.stdout[-2500:]}{done.stderr[-2500:]}")
    return "\n".join(lines)


def _teardown(name: str, relay: str, had_gwbridge: bool) -> None:
    sh("docker", "rm", "-f", relay, check=False)
    sh("docker", "stack", "rm", name, check=False)
    # The herder's own services (daemons, golems) carry its instance label.
    for service in sh(
        "docker", "service", "ls", "-q", "--filter", f"label=herder.instance={name}", check=False
    ).split():
        sh("docker", "service", "rm", service, check=False)
    wait_until(
        lambda: not sh("docker", "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={name}", check=False), 60
    )
    # Minion containers the replicas left (a killed replica cannot clean up).
    for container in sh("docker", "ps", "-aq", "--filter", f"label=herder.instance={name}", check=False).split():
        sh("docker", "rm", "-f", container, check=False)
    wait_until(
        lambda: (
            not sh(
                "docker",
                "ps",
                "-aq",
                "--filter",
                "label=com.docker.swarm.service.name",
                "--filter",
                f"label=herder.instance={name}",
                check=False,
            )
        ),
        30,
    )
    sh("docker", "swarm", "leave", "--force", check=False)
    wait_until(lambda: not sh("docker", "network", "ls", "-q", "--filter", f"name=^{name}$", check=False), 20)
    sh("docker", "network", "rm", name, check=False)
    if not had_gwbridge:
        wait_until(
            lambda: (
                sh("docker", "network", "rm", "docker_gwbridge", check=False) is not None
                and not sh("docker", "network", "ls", "-q", "--filter", "name=^docker_gwbridge$", check=False)
            ),
            20,
        )
    for volume in sh("docker", "volume", "ls", "-q", "--filter", f"name={name}", check=False).split():
        sh("docker", "volume", "rm", "-f", volume, check=False)


def test_stack_minions_daemon_and_a_replica_killed(stack):
    a, b = stack.ports["a"], stack.ports["b"]
    # Two replicas, two different tasks behind the relay's two ports.
    assert len(stack.containers("herder")) == 2
    # The stack's own entry point (front, published in mode host) reaches them too.
    assert wait_until(lambda: request(stack.front, "/golem/v1/ls", timeout=5)[0] == 200, 30)

    status, body = request(
        a,
        "/token/v1/generate",
        data={"password": stack.token_password, "email": "swarm@example.org", "credits": "100000"},
    )
    assert status == 200, body
    token = json.loads(body)["token"]

    # Minions run on each replica's local engine (not as services).
    for port in (a, b):
        status, body = request(port, "/minion/v1/spawn", data={"env": "python", "main.py": f"print({port} * 2)"})
        assert status == 200, body
        assert json.loads(body)["StdOut"].strip() == str(port * 2)
    assert stack.services("minion") == []

    # A daemon spawned through replica A runs as a Swarm service on the overlay,
    # publishes no host port, and is proxied by replica B.
    daemon = f"web{secrets.token_hex(3)}"
    status, body = request(
        a,
        f"/daemon/v1/spawn?token={token}",
        data={"name": daemon, "image": "herder/daemon-echo:latest", "ports": '["8080"]', "data/kept.txt": "kept"},
    )
    assert status == 200, body
    answer = json.loads(body)
    services = stack.services("daemon")
    assert len(services) == 1
    spec = services[0]["Spec"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr" and not services[0]["Endpoint"].get("Ports")
    assert spec["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == 512 * 1024**2
    assert [n["Target"] for n in spec["TaskTemplate"]["Networks"]] == [
        sh("docker", "network", "inspect", "-f", "{{.Id}}", stack.name)
    ]
    proxied = f"{answer['ProxyURL']}hello"
    for port in (b, a):
        assert wait_until(lambda port=port: request(port, proxied, timeout=5) == (200, b"hello"), 60), request(
            port, proxied
        )
    # The files went into its volume before it started.
    assert json.loads(request(b, f"{answer['ProxyURL']}files")[1]) == ["data/kept.txt"]

    # Metered across replicas: the supervisors charge it while it runs.
    def used() -> int:
        status, body = request(b, f"/daemon/v1/ls?token={token}")
        rows = json.loads(body) if status == 200 else []
        return rows[0]["credits_used"] if rows else 0

    assert wait_until(lambda: used() >= 2, 60, 1), used()

    # Kill the replica holding the supervisor's lease, hard: the lease moves to
    # the other, which keeps proxying and metering; Swarm starts a new replica.
    addresses = {stack.address(c): c for c in stack.containers("herder")}
    holder = wait_until(stack.lease_holder, 30)
    assert holder in addresses, (holder, addresses)
    victim = addresses[holder]
    sh("docker", "kill", victim)
    assert wait_until(lambda: stack.lease_holder() not in ("", holder), 60, 1)
    # The survivor, or the replica Swarm started in the victim's place.
    now = {stack.address(c) for c in stack.containers("herder") if c != victim}
    assert stack.lease_holder() in now, (stack.lease_holder(), holder, now)
    survivor = None
    for port in (a, b):
        if wait_until(lambda port=port: request(port, proxied, timeout=3) == (200, b"hello"), 10, 1):
            survivor = port
            break
    assert survivor is not None
    before = used()
    assert wait_until(lambda: used() > before, 60, 1)
    assert wait_until(lambda: len(stack.containers("herder")) == 2 and victim not in stack.containers("herder"), 120, 2)

    # Killed (and wiped) through any replica: the service goes.
    status, body = request(survivor, f"/daemon/v1/kill/{daemon}?wipe=true&token={token}")
    assert status == 200, body
    assert wait_until(lambda: stack.services("daemon") == [], 30)
    assert request(survivor, proxied)[0] == 404


def test_golem_runs_as_a_service_that_every_replica_sees(stack):
    assert stack.both_answer()
    a, b = stack.ports["a"], stack.ports["b"]
    webstrate = f"swarm-{secrets.token_hex(4)}"
    status, body = request(a, f"/golem/v1/spawn/{webstrate}")
    assert status == 200, body
    services = stack.services("golem")
    assert [s["Spec"]["Labels"]["herder.owner"] for s in services] == [webstrate]
    spec = services[0]["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    # Confined as the local golem is, minus what Swarm cannot do (seccomp: --no-sandbox).
    assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"]
    assert "--no-sandbox" in container["Args"]
    assert [m["Type"] for m in container["Mounts"]] == ["tmpfs"]
    assert spec["TaskTemplate"]["Resources"]["Limits"]["Pids"] == 512
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"  # the supervisor restarts golems
    assert spec["EndpointSpec"]["Mode"] == "dnsrr" and not services[0]["Endpoint"].get("Ports")

    # Replica B sees it (one database), and kills it: the service goes.
    listed = json.loads(request(b, "/golem/v1/ls")[1])
    assert [g["webstrate"] for g in listed if g["webstrate"] == webstrate] == [webstrate]
    status, body = request(b, f"/golem/v1/kill/{webstrate}")
    assert status == 200, body
    assert wait_until(lambda: stack.services("golem") == [], 30)


def test_ad_hoc_minion_pairs_across_replicas(stack):
    """The golem's side on replica A, the ad-hoc minion on replica B: the
    pairing crosses replicas through Redis (a Python client plays the golem)."""
    from websockets.sync.client import connect

    assert stack.both_answer()
    a, b = stack.ports["a"], stack.ports["b"]
    webstrate = f"pair-{secrets.token_hex(4)}"

    def event(socket) -> dict:
        return json.loads(socket.recv(timeout=15))

    with connect(f"ws://127.0.0.1:{a}/golem/v1/connect/{webstrate}", open_timeout=15) as control:
        with connect(f"ws://127.0.0.1:{b}/minion/v1/connect/{webstrate}?type=t", open_timeout=15) as minion:
            connected = event(control)
            assert connected["Event"] == "minion-connected", connected
            with connect(
                f"ws://127.0.0.1:{a}/golem/v1/connect-to/{webstrate}/{connected['ID']}", open_timeout=15
            ) as golem:
                assert event(minion) == {"Event": "golem-connected"}
                minion.send("from the minion on B")
                assert golem.recv(timeout=15) == "from the minion on B"
                golem.send("from the golem on A")
                assert minion.recv(timeout=15) == "from the golem on A"


def test_swarm_runtime_service_lifecycle(stack, settings):
    """SwarmRuntime from this process (the engine is the swarm's manager): a
    daemon-kind service is started, listed by label, polled, stopped (its exit
    code then known), and removed; minions stay containers."""
    from herder.runtime import ContainerGone, ContainerSpec
    from herder.swarm import SwarmRuntime

    settings.HERDER_SWARM_NETWORK = stack.name
    runtime = SwarmRuntime()
    name = f"herder-daemon-{stack.name}-lifecycle"
    spec = ContainerSpec(
        kind="daemon",
        owner="lifecycle@example.org",
        image="herder/daemon-echo:latest",
        name=name,
        ports={8080: None},
        memory="64m",
        pids=32,
        network=name,
        tmpfs={"/tmp": "size=8m,mode=1777"},
        restart="on-failure",
    )
    handle = runtime.start(spec)
    try:
        assert handle.name == name and len(handle.id) == 25
        listed = runtime.list(kind="daemon", owner="lifecycle@example.org", ours=True)
        assert [i.handle for i in listed] == [handle]
        assert wait_until(lambda: runtime.list(kind="daemon", owner="lifecycle@example.org")[0].status == "running", 30)
        assert runtime.poll(handle) is None
        assert runtime.published_ports(handle) == {8080: 8080}
        assert runtime.address(handle, 8080, published=8080, host="127.0.0.1") == (name, 8080)
        # The local engine's list holds no service task as a container of its kind.
        assert all(i.handle.id != handle.id for i in runtime.list(kind="minion"))
        runtime.stop(handle)
        assert wait_until(lambda: runtime.poll(handle) is not None, 30)
    finally:
        runtime.remove(handle)
    runtime.remove(handle)  # idempotent
    with pytest.raises(ContainerGone):
        runtime.poll(handle)
