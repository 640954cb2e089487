"""Daemons through a real `herd` process: concurrent spawns, and the daemon
origin against real Chromium (an operator logged into the admin, a daemon
page that attacks it; a daemon web app that needs its own origin)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from herder.runtime import get_runtime
from tests.browser import browser  # noqa: F401
from tests.golems.conftest import free_port, wait_for_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
ECHO = "herder/daemon-echo:latest"


class LiveHerder:
    """`manage.py herd` on a free loopback port with its own SQLite file and
    instance label, the daemon origin http://{name}.daemons.localhost:<port>."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.instance = f"{django_settings.HERDER_INSTANCE}-live-{data_dir.name[-12:]}"
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        self.env.update(
            HERDER_DATA_DIR=str(data_dir),
            HERDER_INSTANCE=self.instance,
            HERDER_LOG_LEVEL="WARNING",
            HERDER_DAEMON_IMAGES=ECHO,
            HERDER_PUBLIC_URL=self.base,
            PYTHONUNBUFFERED="1",
            HERDER_DAEMON_ORIGIN=f"http://{{name}}.daemons.localhost:{self.port}",
            DJANGO_SUPERUSER_PASSWORD="operator-pw",
            DJANGO_ALLOW_ASYNC_UNSAFE="",
        )
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("createsuperuser", "--noinput", "--username", "operator", "--email", "op@herder.test")
        self.log = open(data_dir / "herd.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "herd", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port("127.0.0.1", self.port, process=self.process)

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        ).stdout.strip()

    def token(self, email: str) -> str:
        return self.manage("mint_token", "-e", email, "-c", "100000")

    def call(self, method: str, path: str, token: str, fields: dict | None = None) -> tuple[int, dict]:
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def spawn(self, token: str, name: str, **files: str) -> tuple[int, dict]:
        return self.call("POST", "/daemon/v1/spawn", token, {"name": name, "image": ECHO, "ports": "[8080]", **files})

    def wait_ready(self, answer: dict) -> None:
        """Until the daemon answers on its origin (Python's resolver knows no
        *.localhost: the Host header names it)."""
        from tests.daemons.test_daemons import wait_until

        host = answer["URL"].split("://", 1)[1].rstrip("/")

        def answers() -> bool:
            request = urllib.request.Request(f"{self.base}/hello", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.read() == b"hello"
            except OSError:
                return False

        assert wait_until(answers, seconds=60), (host, self.containers(), self.output())

    def containers(self) -> list:
        return [c for c in get_runtime().list(kind="daemon") if c.labels.get("herder.instance") == self.instance]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.log.close()
        runtime = get_runtime()
        for info in self.containers():
            runtime.remove(info.handle)
        for network in runtime.networks(kind="daemon"):
            if network.labels.get("herder.instance") == self.instance:
                runtime.network_remove(network.name)
        with sqlite3.connect(self.data_dir / "herder.sqlite3") as db:
            for (volume,) in db.execute("select volume from daemons_daemon"):
                runtime.remove_volume(volume)

    def output(self) -> str:
        return (self.data_dir / "herd.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def live(tmp_path, docker_engine):
    herder = LiveHerder(tmp_path)
    yield herder
    herder.close()
    assert herder.containers() == []


def test_concurrent_spawns_of_one_name_make_one_container(live):
    tokens = [live.token("racer@herder.test") for _ in range(2)]
    barrier = threading.Barrier(8)
    answers: list[tuple[int, dict]] = []

    def spawn(token: str) -> None:
        barrier.wait()
        answers.append(live.spawn(token, "race"))

    threads = [threading.Thread(target=spawn, args=(tokens[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    statuses = sorted(status for status, _ in answers)
    assert len(statuses) == 8 and set(statuses) <= {200, 409}, (answers, live.output())
    assert 200 in statuses
    assert all(body["code"] == "daemon_busy" for status, body in answers if status == 409)
    containers = live.containers()
    assert len(containers) == 1, containers
    status, listed = live.call("GET", "/daemon/v1/ls", tokens[0])
    assert status == 200 and len(listed) == 1 and listed[0]["state"] == "running"
    assert live.call("GET", "/daemon/v1/kill/race", tokens[1])[0] == 200
    assert live.containers() == []


ATTACK = """<!doctype html><title>attack</title><script>
var out = {};
try { out.cookie = document.cookie; } catch (e) { out.cookie = "error:" + e.name; }
try { document.cookie = "sessionid=planted; path=/"; document.cookie = "csrftoken=planted; path=/"; }
catch (e) { out.set = "error:" + e.name; }
function grab(url) {
  return fetch(url, {credentials: "include"}).then(function (r) { return r.text(); })
    .catch(function (e) { return "error:" + e; });
}
Promise.all([grab("/admin/"), grab("HERDER/admin/"), grab("HERDER/admin/auth/user/")]).then(function (r) {
  out.admin = r[0]; out.herderAdmin = r[1]; out.users = r[2];
  window.result = out; document.title = "done";
});
</script>"""


def operator_login(context, base: str) -> str:
    page = context.new_page()
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")
    assert "Site administration" in page.content()
    page.close()
    return session_of(context, base)


def session_of(context, base: str) -> str:
    return {c["name"]: c["value"] for c in context.cookies(base)}.get("sessionid", "")


def test_a_daemon_page_cannot_read_or_use_the_operators_admin_session(live, browser):  # noqa: F811
    token = live.token("mallory@herder.test")
    status, answer = live.spawn(token, "evil", **{"attack.html": ATTACK.replace("HERDER", live.base)})
    assert status == 200, answer
    live.wait_ready(answer)
    context = browser.new_context()
    try:
        session = operator_login(context, live.base)
        assert session
        csrf = {c["name"]: c["value"] for c in context.cookies(live.base)}.get("csrftoken")

        for url in (
            f"{live.base}{answer['ProxyURL']}pages/attack.html",  # the path route, sandboxed
            f"{answer['URL']}pages/attack.html",
        ):  # the daemon's own origin
            page = context.new_page()
            page.goto(url)
            page.wait_for_function("document.title === 'done'", timeout=15000)
            result = page.evaluate("window.result")
            page.close()
            assert session not in json.dumps(result), (url, result)
            for key in ("admin", "herderAdmin", "users"):
                assert "Site administration" not in result[key] and "operator" not in result[key], (url, key)

        # The daemon's Set-Cookie, on either route, never lands on the herder.
        for url in (
            f"{live.base}{answer['ProxyURL']}set-cookie?cookie=sessionid%3Dplanted%3B%20Path%3D%2F",
            f"{answer['URL']}set-cookie?cookie=sessionid%3Dplanted%3B%20Domain%3Dlocalhost%3B%20Path%3D%2F",
        ):
            page = context.new_page()
            page.goto(url)
            page.close()

        assert session_of(context, live.base) == session
        assert {c["name"]: c["value"] for c in context.cookies(live.base)}.get("csrftoken") == csrf
        page = context.new_page()
        page.goto(f"{live.base}/admin/")
        assert "Site administration" in page.content()
        page.close()
    finally:
        context.close()


def test_a_daemon_web_app_keeps_its_cookies_websocket_and_links_on_its_origin(live, browser):  # noqa: F811
    token = live.token("builder@herder.test")
    status, answer = live.spawn(token, "app")
    assert status == 200, answer
    assert answer["URL"].startswith("http://app-") and f".daemons.localhost:{live.port}/" in answer["URL"]
    live.wait_ready(answer)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{answer['URL']}app/")
        page.wait_for_selector("body[data-ws=ping]", timeout=15000)
        page.click("#next")
        page.wait_for_url(f"{answer['URL']}app/next")
        cookies = page.inner_text("body")
        assert "app=server" in cookies and "js=1" in cookies, cookies
        # They stay on the daemon's host.
        assert context.cookies(live.base) == []
    finally:
        context.close()
