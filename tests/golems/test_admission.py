"""Golem admission on the real engine: the total, the per-client rate of new
golems, the webstrates server's word on whether a webstrate exists, and golem
starts that hold no database lock while Docker works."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import cache
from django.db import OperationalError, close_old_connections, connection
from django.utils import timezone
from rest_framework.test import APIClient

from golems.models import Golem, GolemPresence
from golems.services import golem_kill, golem_reset, golem_snapshot, golem_spawn
from herder.runtime import DockerRuntime
from tests.golems.conftest import webstrate_id

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _golem_settings(settings):
    # The golems need no page: Chromium keeps running on its error page.
    settings.HERDER_GOLEM_WEBSTRATES_URL = "http://127.0.0.1:9"
    settings.HERDER_GOLEM_CHECK_EXISTS = False
    cache.clear()  # rates and existence answers of earlier tests
    yield
    cache.clear()


def kill_all(*webstrates: str) -> None:
    for webstrate in webstrates:
        if Golem.objects.filter(webstrate=webstrate, state__in=["starting", "running", "crashed"]).exists():
            golem_kill(webstrate=webstrate)


def running(engine, webstrate: str) -> list[str]:
    return [c.handle.id for c in engine.list(kind="golem", owner=webstrate) if c.status == "running"]


def client_at(address: str) -> APIClient:
    return APIClient(REMOTE_ADDR=address)


def test_spawns_past_the_total_are_429_with_retry_after(docker_engine, settings):
    settings.HERDER_GOLEM_MAX = 2
    settings.HERDER_GOLEM_SPAWN_RATE = ""
    one, two, three = (webstrate_id(f"total-{n}") for n in (1, 2, 3))
    client = client_at("203.0.113.10")
    try:
        assert client.get(f"/golem/v1/spawn/{one}").status_code == 200
        assert client_at("203.0.113.11").get(f"/golem/v1/spawn/{two}").status_code == 200
        refused = client_at("203.0.113.12").get(f"/golem/v1/spawn/{three}")
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_requests"
        assert int(refused["Retry-After"]) >= 1
        assert docker_engine.list(kind="golem", owner=three) == []
        assert not Golem.objects.filter(webstrate=three).exists()
        # A golem that runs is answered whatever the total.
        assert client.get(f"/golem/v1/spawn/{one}").status_code == 200
        assert golem_snapshot()["in_use"] == 2 and golem_snapshot()["limit"] == 2
        # A golem gone frees its place.
        golem_kill(webstrate=two)
        assert client.get(f"/golem/v1/spawn/{three}").status_code == 200
        assert len(running(docker_engine, three)) == 1
    finally:
        kill_all(one, two, three)


def test_new_golems_past_the_clients_rate_are_429_and_running_ones_are_free(docker_engine, settings):
    settings.HERDER_GOLEM_MAX = 10
    settings.HERDER_GOLEM_SPAWN_RATE = "2/h"
    one, two, three = (webstrate_id(f"rate-{n}") for n in (1, 2, 3))
    stranger = client_at("203.0.113.20")
    try:
        first = stranger.get(f"/golem/v1/spawn/{one}").content
        assert stranger.get(f"/golem/v1/spawn/{two}").status_code == 200
        # Spawning a golem that runs is not a new golem: any number of times.
        for _ in range(5):
            again = stranger.get(f"/golem/v1/spawn/{one}")
            assert again.status_code == 200 and again.content == first
        refused = stranger.get(f"/golem/v1/spawn/{three}")
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_requests"
        assert 1 <= int(refused["Retry-After"]) <= 3600
        assert docker_engine.list(kind="golem", owner=three) == []
        # Another client is not affected.
        assert client_at("203.0.113.21").get(f"/golem/v1/spawn/{three}").status_code == 200
    finally:
        kill_all(one, two, three)


class WebstratesServer:
    """A tiny webstrates server on 127.0.0.1: `/<id>/?json` is 200 for the
    webstrates it has, 403 for a private one, else 404 (as Webstrates answers)."""

    def __init__(self, *, has: set[str], private: set[str] = frozenset(), head: bool = True) -> None:
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, body: bool) -> None:
                owner.requests.append((self.command, self.path))
                webstrate = self.path.split("/")[1]
                status = 200 if webstrate in has else 403 if webstrate in private else 404
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                if body:
                    self.wfile.write(b"[]")

            def do_GET(self):
                self.answer(True)

            if head:

                def do_HEAD(self):
                    self.answer(False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("head", [True, False], ids=["head", "get-only"])
def test_spawn_needs_a_webstrate_the_webstrates_server_has(docker_engine, settings, head):
    known, private, invented = (webstrate_id(f"exists-{n}-{head}") for n in ("known", "private", "invented"))
    server = WebstratesServer(has={known}, private={private}, head=head)
    settings.HERDER_WEBSTRATES_URL = server.url
    settings.HERDER_GOLEM_CHECK_EXISTS = True
    settings.HERDER_GOLEM_SPAWN_RATE = ""
    client = client_at("203.0.113.30")
    try:
        for webstrate in (invented, private):
            missing = client.get(f"/golem/v1/spawn/{webstrate}")
            assert missing.status_code == 404 and missing.json()["code"] == "webstrate_not_found"
            assert docker_engine.list(kind="golem", owner=webstrate) == []
            assert not Golem.objects.filter(webstrate=webstrate).exists()
        asked = len(server.requests)
        assert (("HEAD" if head else "GET"), f"/{invented}/?json") in server.requests
        # The answer is cached: asking again does not reach the webstrates server.
        assert client.get(f"/golem/v1/spawn/{invented}").status_code == 404
        assert len(server.requests) == asked

        assert client.get(f"/golem/v1/spawn/{known}").status_code == 200
        assert len(running(docker_engine, known)) == 1
    finally:
        server.close()
        kill_all(known)


def test_spawn_is_503_when_the_webstrates_server_does_not_answer(docker_engine, settings):
    # A listening socket that never answers: the check gives up after its timeout.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    settings.HERDER_WEBSTRATES_URL = f"http://127.0.0.1:{silent.getsockname()[1]}"
    settings.HERDER_GOLEM_CHECK_EXISTS = True
    settings.HERDER_GOLEM_CHECK_TIMEOUT = 0.3
    webstrate = webstrate_id("silent")
    try:
        answer = client_at("203.0.113.40").get(f"/golem/v1/spawn/{webstrate}")
        assert answer.status_code == 503 and answer.json()["code"] == "webstrates_unavailable"
        assert docker_engine.list(kind="golem", owner=webstrate) == []
    finally:
        silent.close()


class ProbingRuntime(DockerRuntime):
    """The real runtime; while it starts a golem, another thread writes to the
    database with no busy wait at all (SQLite fails such a write at once while
    anyone holds the write lock) and reads the golem's row."""

    probes: list[tuple[str, str]] = []
    during_start = None

    def start(self, spec, **kwargs):
        if spec.kind == "golem":
            thread = threading.Thread(target=self._probe, args=(spec.owner,))
            thread.start()
            thread.join()
            if ProbingRuntime.during_start is not None:
                ProbingRuntime.during_start(spec.owner)
        return super().start(spec, **kwargs)

    @classmethod
    def _probe(cls, webstrate: str) -> None:
        try:
            if connection.vendor == "sqlite":
                with connection.cursor() as cursor:
                    cursor.execute("PRAGMA busy_timeout = 0")
            now = timezone.now()
            GolemPresence.objects.create(webstrate=f"probe-{len(cls.probes)}", channel="probe", connected=now, seen=now)
            cls.probes.append(("wrote", Golem.objects.get(webstrate=webstrate).state))
        except OperationalError as exc:
            cls.probes.append(("failed", str(exc)))
        finally:
            connection.close()
            close_old_connections()


@pytest.fixture
def probing_runtime(settings):
    settings.HERDER_RUNTIME = "tests.golems.test_admission.ProbingRuntime"
    ProbingRuntime.probes = []
    ProbingRuntime.during_start = None
    yield ProbingRuntime
    ProbingRuntime.during_start = None


def test_no_database_lock_is_held_while_docker_starts_a_golem(docker_engine, probing_runtime):
    """golem spawn and reset used to keep their transaction open across Docker's
    create and start: every other writer (a minion run recording itself) waited."""
    webstrate = webstrate_id("nolock")
    try:
        golem_spawn(webstrate=webstrate)
        golem = Golem.objects.get(webstrate=webstrate)
        golem_reset(webstrate=webstrate)
        # Each start: another thread wrote at once, and saw the claim committed.
        assert probing_runtime.probes == [("wrote", "starting"), ("wrote", "starting")]
        assert Golem.objects.get(webstrate=webstrate).container_id != golem.container_id
        assert len(running(docker_engine, webstrate)) == 1
    finally:
        kill_all(webstrate)


def test_a_start_that_lost_its_claim_removes_its_container(docker_engine, probing_runtime):
    """Killed (from another process, say) while Docker starts it: the start does not
    resurrect the golem, and what it started is removed."""
    webstrate = webstrate_id("lost-claim")
    probing_runtime.during_start = lambda owner: Golem.objects.filter(webstrate=owner).update(
        state=Golem.State.KILLED, stopped=timezone.now()
    )
    golem = golem_spawn(webstrate=webstrate)
    assert golem.state == Golem.State.KILLED and golem.container_id == ""
    assert docker_engine.list(kind="golem", owner=webstrate) == []


def test_concurrent_spawns_of_one_webstrate_start_one_golem(docker_engine, settings):
    webstrate = webstrate_id("concurrent")
    answers: list[str] = []

    def spawn() -> None:
        try:
            answers.append(golem_spawn(webstrate=webstrate).container_id)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=spawn) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(answers) == 4 and len(set(answers)) == 1 and answers[0]
        assert running(docker_engine, webstrate) == answers[:1]
    finally:
        kill_all(webstrate)


def test_a_real_herder_counts_new_golems_by_the_clients_address(tmp_path, docker_engine):
    """Through herd (uvicorn, ASGI): the client is the peer's address, the rate holds."""
    import urllib.error
    import urllib.request

    from tests.golems.conftest import Herder, herder_env, migrate

    env = herder_env(tmp_path, HERDER_GOLEM_SPAWN_RATE="1/h", HERDER_GOLEM_WEBSTRATES_URL="http://127.0.0.1:9")
    migrate(env)
    herder = Herder(env=env, log=tmp_path / "herder.log", herd=True)
    first, second = webstrate_id("asgi-rate-1"), webstrate_id("asgi-rate-2")
    try:
        with urllib.request.urlopen(f"{herder.http}/golem/v1/spawn/{first}", timeout=60) as answer:
            container_id = answer.read().decode().strip()
        with urllib.request.urlopen(f"{herder.http}/golem/v1/spawn/{first}", timeout=60) as answer:
            assert answer.read().decode().strip() == container_id  # running: not counted
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{herder.http}/golem/v1/spawn/{second}", timeout=60)
        assert refused.value.code == 429 and int(refused.value.headers["Retry-After"]) >= 1
        assert docker_engine.list(kind="golem", owner=second) == []
        with urllib.request.urlopen(f"{herder.http}/golem/v1/kill/{first}", timeout=60) as answer:
            assert answer.read().decode().strip() == "ok"
    finally:
        herder.stop()
        print(herder.output())
        for info in docker_engine.list(kind="golem", owner=first):
            docker_engine.remove(info.handle)


def test_resets_count_against_the_clients_rate_as_new_golems_do(docker_engine, settings):
    """A reset starts a fresh Chromium: a page making its visitors ask for resets
    in a loop (`<img>`) is bounded like one asking for new golems."""
    settings.HERDER_GOLEM_MAX = 10
    settings.HERDER_GOLEM_SPAWN_RATE = "2/h"
    one = webstrate_id("rate-reset")
    stranger = client_at("203.0.113.30")
    try:
        assert stranger.get(f"/golem/v1/spawn/{one}").status_code == 200  # 1 of 2
        assert stranger.get(f"/golem/v1/reset/{one}").status_code == 200  # 2 of 2
        refused = stranger.get(f"/golem/v1/reset/{one}")
        assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
        # Another client still may; the admin's resets (no client) are never rated.
        assert client_at("203.0.113.31").get(f"/golem/v1/reset/{one}").status_code == 200
    finally:
        kill_all(one)
