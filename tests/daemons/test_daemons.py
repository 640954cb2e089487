"""Daemons end to end against the real engine, with the daemon-echo image."""

import json
import time
import urllib.request

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from accounts.models import CreditEntry
from accounts.services import account_balance, credits_spend
from daemons.models import Daemon
from daemons.proxy import close_upstream_session
from daemons.services import daemon_supervise
from herder.asgi import application
from herder.runtime import Handle, get_runtime
from herder.supervisor import Supervisor

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


def wait_until(predicate, seconds=15.0, step=0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def http_via_proxy(method: str, path: str, body: bytes = b"", chunks: int = 1, headers=()):
    """One request through the herder's ASGI app, the body sent in `chunks` parts."""
    from asgiref.testing import ApplicationCommunicator

    async def run():
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "scheme": "http",
            "headers": [(b"host", b"herder.test"), *headers],
            "client": ("127.0.0.7", 5000),
        }
        communicator = ApplicationCommunicator(application, scope)
        size = max(1, len(body) // chunks)
        parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        for i, part in enumerate(parts):
            await communicator.send_input({"type": "http.request", "body": part, "more_body": i < len(parts) - 1})
        start = await communicator.receive_output(10)
        received, messages = bytearray(), 0
        while True:
            message = await communicator.receive_output(30)
            received += message.get("body", b"")
            messages += 1
            if not message.get("more_body"):
                break
        await close_upstream_session()
        return start["status"], dict(start["headers"]), bytes(received), messages

    return async_to_sync(run)()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read()


def ready(address: str, port: int) -> bool:
    try:
        return get(f"http://{address}:{port}/hello") == b"hello"
    except OSError:
        return False


def spawn_ready(holder, **kwargs) -> dict:
    response = holder.spawn(**kwargs)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert wait_until(lambda: ready(answer["Address"], answer["Ports"]["8080"])), answer
    return answer


def test_spawn_ls_proxy_attach_kill(alice):
    answer = spawn_ready(alice, name="web")

    jti = alice.token_row.jti
    assert answer["Name"] == f"web-{jti}"
    assert answer["ProxyURL"] == f"/daemon/v1/proxy/web-{jti}/"
    assert answer["Address"] == "127.0.0.1"

    listed = alice.client.get("/daemon/v1/ls").json()
    assert [(d["Name"], d["state"], d["image"]) for d in listed] == [
        (answer["Name"], "running", "herder/daemon-echo:latest")
    ]

    status, headers, body, _ = http_via_proxy("GET", f"{answer['ProxyURL']}hello")
    assert (status, body) == (200, b"hello")

    status, _, body, _ = http_via_proxy(
        "GET", f"{answer['ProxyURL']}some/path", headers=[(b"connection", b"keep-alive, x-secret"), (b"x-secret", b"1")]
    )
    seen = json.loads(body)
    sent = {key.lower(): value for key, value in seen["headers"].items()}
    assert seen["path"] == "/some/path"
    assert sent["x-forwarded-for"] == "127.0.0.7"
    assert sent["x-forwarded-host"] == "herder.test"
    assert sent["x-forwarded-prefix"] == f"/daemon/v1/proxy/{answer['Name']}"
    # Hop-by-hop: neither the Connection header nor what it names goes through.
    assert "x-secret" not in sent and "keep-alive, x-secret" not in sent.get("connection", "")
    assert "user-agent" not in sent and "accept-encoding" not in sent

    big = bytes(range(256)) * (8 * 1024 * 1024 // 256)  # 8 MiB in 64 parts
    status, _, body, messages = http_via_proxy(
        "POST",
        f"{answer['ProxyURL']}echo",
        big,
        chunks=64,
        headers=[(b"content-type", b"application/octet-stream"), (b"content-length", str(len(big)).encode())],
    )
    assert status == 200 and body == big
    assert messages > 1, "the response was buffered whole instead of streamed"

    async def websocket_round_trip():
        communicator = WebsocketCommunicator(application, f"{answer['ProxyURL']}ws")
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await communicator.send_to(text_data="ping")
        assert await communicator.receive_from(10) == "ping"
        await communicator.send_to(bytes_data=b"\x00\x01")
        assert (await communicator.receive_output(10))["bytes"] == b"\x00\x01"
        await communicator.disconnect()

    async_to_sync(websocket_round_trip)()

    async def attach_round_trip():
        communicator = WebsocketCommunicator(application, f"/daemon/v1/attach/web?token={alice.token}")
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        await communicator.send_to(text_data="hi there\n")
        assert await communicator.receive_from(10) == "echo: hi there\n"
        await communicator.send_to(text_data="err oops\n")
        assert await communicator.receive_from(10) == "oops\n"
        await communicator.disconnect()

    async_to_sync(attach_round_trip)()

    killed = alice.client.get("/daemon/v1/kill/web")
    assert killed.status_code == 200 and killed.json()["state"] == "killed"
    assert get_runtime().list(kind="daemon", ours=True) == []
    assert alice.client.get("/daemon/v1/ls").json() == []
    status, _, body, _ = http_via_proxy("GET", f"{answer['ProxyURL']}hello")
    assert status == 404 and json.loads(body)["code"] == "not_found"


def test_kill_keeps_files_and_wipe_removes_them(alice):
    answer = spawn_ready(alice, name="files", **{"data/keep.txt": "kept"})
    port = answer["Ports"]["8080"]
    assert json.loads(get(f"http://127.0.0.1:{port}/files")) == ["data/keep.txt"]

    assert alice.client.post("/daemon/v1/kill/files").status_code == 200
    answer = spawn_ready(alice, name="files")
    assert json.loads(get(f"http://127.0.0.1:{answer['Ports']['8080']}/files")) == ["data/keep.txt"]

    assert alice.client.get("/daemon/v1/kill/files?wipe=true").status_code == 200
    answer = spawn_ready(alice, name="files")
    assert json.loads(get(f"http://127.0.0.1:{answer['Ports']['8080']}/files")) == []


def test_respawning_a_name_restarts_it(alice):
    first = spawn_ready(alice, name="again")
    first_container = Daemon.objects.get(name="again").container_id

    second = spawn_ready(alice, name="again")

    assert second["Name"] == first["Name"]
    assert Daemon.objects.get(name="again").container_id != first_container
    assert [c.handle.id for c in get_runtime().list(kind="daemon", ours=True)] == [Daemon.objects.get().container_id]


def test_a_daemon_is_stopped_when_its_credits_run_out(alice, settings):
    credits_spend(account=alice.account, amount=account_balance(alice.account) - 3)
    spawn_ready(alice, name="poor")

    stopped = wait_until(
        lambda: (daemon_supervise(), Daemon.objects.get().state)[1] == "out_of_credits", seconds=15, step=0.5
    )

    daemon = Daemon.objects.get()
    assert stopped, daemon.state
    assert account_balance(alice.account) == 0
    spends = CreditEntry.objects.filter(account=alice.account, subject=daemon.full_name)
    assert sum(-entry.amount for entry in spends) == daemon.credits_used == 3
    assert get_runtime().list(kind="daemon", ours=True) == []
    assert alice.spawn(name="poor").status_code == 402


def test_spawning_at_zero_credits_is_402(alice):
    credits_spend(account=alice.account, amount=account_balance(alice.account))
    response = alice.spawn()
    assert response.status_code == 402
    assert response.json()["code"] == "insufficient_credits"
    assert not Daemon.objects.exists()


def test_a_restarted_supervisor_adopts_and_keeps_charging(alice):
    spawn_ready(alice, name="long")
    daemon = Daemon.objects.get()
    # The herder died right after starting the container, before recording it.
    Daemon.objects.filter(pk=daemon.pk).update(state="starting")

    time.sleep(1.2)
    Supervisor(interval=1, duties=[daemon_supervise]).run_once()
    assert Daemon.objects.get().state == "running"
    time.sleep(2.2)
    Supervisor(interval=1, duties=[daemon_supervise]).run_once()

    assert Daemon.objects.get().credits_used >= 2
    assert account_balance(alice.account) == 100_000 - Daemon.objects.get().credits_used


def test_a_daemon_whose_container_died_is_marked_dead(alice):
    spawn_ready(alice, name="mortal")
    daemon = Daemon.objects.get()
    get_runtime().remove(Handle(id=daemon.container_id, name=daemon.full_name))

    daemon_supervise()

    assert Daemon.objects.get().state == "dead"


def test_without_a_token_it_is_401(alice):
    from rest_framework.test import APIClient

    for method, path in (("post", "/daemon/v1/spawn"), ("get", "/daemon/v1/ls"), ("get", "/daemon/v1/kill/x")):
        response = getattr(APIClient(), method)(path)
        assert response.status_code == 401, path
        assert response.json()["code"] == "invalid_token"


def test_another_accounts_daemon_is_a_404(alice, bob):
    spawn_ready(alice, name="mine")

    response = bob.client.get("/daemon/v1/kill/mine")
    assert response.status_code == 404
    assert bob.client.get(f"/daemon/v1/kill/mine-{alice.token_row.jti}").status_code == 404
    assert Daemon.objects.get().state == "running"

    async def attach():
        communicator = WebsocketCommunicator(application, f"/daemon/v1/attach/mine?token={bob.token}")
        connected, _ = await communicator.connect(timeout=10)
        error = json.loads(await communicator.receive_from(5))
        closed = await communicator.receive_output(5)
        return error, closed

    error, closed = async_to_sync(attach)()
    assert error["code"] == "not_found" and closed["code"] == 4404


@pytest.mark.parametrize("ports", ["not json", '{"a": 1}', '["http"]', "[0]", "[70000]", "[true]"])
def test_bad_ports_are_400(alice, ports):
    response = alice.spawn(ports=ports)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_ports"
    assert not Daemon.objects.exists()


def test_images_not_allowed_or_missing_are_400(alice, settings):
    response = alice.spawn(image="herder/minion-python:latest")
    assert response.status_code == 400 and response.json()["code"] == "image_not_allowed"

    settings.HERDER_DAEMON_IMAGES = ["*"]
    response = alice.spawn(image="herder/not-built:latest")
    assert response.status_code == 400 and "not present" in response.json()["detail"]


def test_bad_names_are_400(alice):
    for name in ("", "UPPER", "-dash", "a" * 64, "sp ace"):
        assert alice.spawn(name=name).status_code == 400, name


def test_ports_are_published_on_loopback_only(alice):
    spawn_ready(alice, name="local")
    daemon = Daemon.objects.get()
    ports = get_runtime().client.api.inspect_container(daemon.container_id)["HostConfig"]["PortBindings"]
    assert [binding["HostIp"] for binding in ports["8080/tcp"]] == ["127.0.0.1"]
