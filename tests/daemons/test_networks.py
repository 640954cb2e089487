"""Each daemon on a network of its own: what it can and cannot reach, probed
from inside a daemon through the runtime."""

import socket
import threading

import pytest

from daemons.models import Daemon
from daemons.services import container_name
from herder.runtime import Handle, get_runtime
from tests.daemons.test_daemons import spawn_ready

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
    "    print('open')\n"
    "except OSError as exc:\n"
    "    print('closed', type(exc).__name__)\n"
)


def probe(daemon: Daemon, host: str, port: int) -> str:
    code, output = get_runtime().exec(
        Handle(id=daemon.container_id, name=daemon.full_name), ["python3", "-c", PROBE, host, str(port)]
    )
    assert code == 0, output
    return output.decode().split()[0]


def network_of(daemon: Daemon) -> dict:
    return get_runtime().client.api.inspect_network(container_name(daemon))


class Listener:
    """A TCP server on the host that accepts and closes."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_daemon_reaches_no_other_tenant_and_no_host_loopback_service(alice, bob):
    spawn_ready(alice, name="a")
    theirs = spawn_ready(bob, name="b")
    mine, other = Daemon.objects.get(name="a"), Daemon.objects.get(name="b")

    network = network_of(mine)
    assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert network["Labels"]["herder.kind"] == "daemon"
    assert list(network["Containers"]) == [mine.container_id]
    gateway = network["IPAM"]["Config"][0]["Gateway"]
    other_ip = network_of(other)["Containers"][other.container_id]["IPv4Address"].split("/")[0]

    loopback_server = Listener("127.0.0.1")
    gateway_server = Listener(gateway)
    try:
        # Sanity: the probe does see an open port (its own server).
        assert probe(mine, "127.0.0.1", 8080) == "open"
        # Another tenant's daemon: neither its unpublished port nor its published one.
        assert probe(mine, other_ip, 8080) == "closed"
        assert probe(mine, gateway, theirs["Ports"]["8080"]) == "closed"
        # The host's loopback services: Redis, PostgreSQL, any server on 127.0.0.1.
        for port in (6379, 5432, loopback_server.port):
            assert probe(mine, gateway, port) == "closed", port
            assert probe(mine, "127.0.0.1", port) == "closed", port
        # What stays reachable (README): host services listening on the
        # network's gateway address, or on 0.0.0.0.
        assert probe(mine, gateway, gateway_server.port) == "open"
    finally:
        loopback_server.close()
        gateway_server.close()

    # The proxy still reaches it, published on the host's loopback.
    from tests.daemons.test_proxy_safety import request

    assert request("GET", f"/daemon/v1/proxy/{mine.full_name}/hello")[2] == b"hello"

    assert alice.client.get("/daemon/v1/kill/a").status_code == 200
    assert [n.name for n in get_runtime().networks(kind="daemon", ours=True)] == [container_name(other)]


def test_one_daemon_one_container_one_network_across_respawns(alice):
    spawn_ready(alice, name="same")
    first = Daemon.objects.get().container_id
    spawn_ready(alice, name="same")

    daemon = Daemon.objects.get()
    containers = get_runtime().list(kind="daemon", ours=True)
    assert [c.handle.id for c in containers] == [daemon.container_id] != [first]
    assert containers[0].handle.name == container_name(daemon)
    assert [n.name for n in get_runtime().networks(kind="daemon", ours=True)] == [container_name(daemon)]


def test_runtime_networks_are_idempotent_and_kept_while_in_use(docker_engine):
    from herder.runtime import ContainerSpec

    name = "herder-test-daemon-net"
    runtime = get_runtime()
    handle = None
    try:
        assert runtime.network_create(name, kind="daemon") == name
        assert runtime.network_create(name, kind="daemon") == name  # exists: reused
        assert [n.name for n in runtime.networks(kind="daemon", ours=True)].count(name) == 1
        handle = runtime.start(
            ContainerSpec(
                kind="daemon",
                owner="herder-test",
                image="herder/daemon-echo:latest",
                name="herder-test-daemon-net-c",
                network=name,
            )
        )
        assert runtime.network_remove(name) is False  # a container is attached
        runtime.remove(handle)
        handle = None
        assert runtime.network_remove(name) is True
        assert runtime.network_remove(name) is True  # gone counts as removed
    finally:
        if handle is not None:
            runtime.remove(handle)
        runtime.network_remove(name)
