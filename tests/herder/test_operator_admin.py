"""The admin as operators use it: the dashboard and the index's summary, the
ledger's sums and CSV, custom actions in the admin's log, running golems
first, and who may open the staff console socket or the token console page."""

import csv
import io
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from accounts.models import Account, Token
from accounts.services import credits_spend, token_mint
from daemons.models import Daemon
from golems.models import Golem
from minions.models import MinionRun


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator(db) -> User:
    return User.objects.create_superuser("operator", "op@herder.test", "pw")


@pytest.fixture
def viewer(db) -> User:
    user = User.objects.create_user("viewer", "viewer@herder.test", "pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    return user


def runs(db) -> None:
    now = timezone.now()
    for i, (env, exit_code, state) in enumerate(
        [("python", 0, "finished"), ("python", 1, "finished"), ("node", 0, "finished"), ("python", None, "running")]
    ):
        MinionRun.objects.create(
            env=env, image=f"herder/minion-{env}", exit_code=exit_code, state=state, duration_ms=100 + i * 50
        )
    MinionRun.objects.update(created=now - timedelta(minutes=1))


@pytest.mark.django_db
def test_the_dashboard_draws_runs_latency_credits_and_running(operator):
    runs(None)
    token_mint(email="spender@herder.test", credits=100)
    credits_spend(account=Account.objects.get(), amount=30, subject="web-x", note="30 s running")
    Golem.objects.create(
        webstrate="w1", state="running", container_id="c" * 64, started=timezone.now() - timedelta(minutes=30)
    )

    page = login(operator).get("/admin/dashboard/").content.decode()

    assert page.count('class="bar"') >= 4, page  # runs (3 keys) and credits
    assert page.count('class="point"') >= 60  # latency and golems/daemons over 60 minutes
    assert "python: exit 0" in page and "python: exit ≠ 0" in page and "python: running" in page
    assert "spender@herder.test" in page
    assert "1 minion run(s) in progress" in page


@pytest.mark.django_db
def test_the_dashboard_and_the_index_are_for_staff_only(operator):
    assert Client().get("/admin/dashboard/").status_code == 302
    outsider = User.objects.create_user("outsider", "o@herder.test", "pw")
    assert login(outsider).get("/admin/dashboard/").status_code == 302
    runs(None)
    index = login(operator).get("/admin/").content.decode()
    assert 'id="herder-summary"' in index and "/admin/dashboard/" in index
    assert "Minion runs in progress</a></th><td>1<" in index


@pytest.mark.django_db
def test_the_ledger_shows_sums_of_its_filter_and_exports_them_as_csv(operator):
    token_mint(email="alice@herder.test", credits=500)
    token_mint(email="bob@herder.test", credits=70)
    alice = Account.objects.get(email="alice@herder.test")
    credits_spend(account=alice, amount=120, subject="web-1", note="120 s running")
    credits_spend(account=alice, amount=5, subject="=cmd|' /C calc'!A0", note="")
    client = login(operator)

    page = client.get("/admin/accounts/creditentry/", {"q": "alice@herder.test"}).content.decode()
    assert "These 3 entries:" in page and "net 375 credits" in page and "taken -125" in page
    assert "/admin/accounts/creditentry/export.csv?q=alice%40herder.test" in page

    answer = client.get("/admin/accounts/creditentry/export.csv", {"q": "alice@herder.test", "kind__exact": "spend"})
    rows = list(csv.reader(io.StringIO(b"".join(answer.streaming_content).decode())))
    assert rows[0] == ["created", "account", "kind", "amount", "subject", "token", "note"]
    assert sorted(r[3] for r in rows[1:]) == ["-120", "-5"]
    assert {r[1] for r in rows[1:]} == {"alice@herder.test"}
    # A spreadsheet would run a cell starting with "=": it is written as text.
    assert "'=cmd|' /C calc'!A0" in [r[4] for r in rows[1:]]
    assert Client().get("/admin/accounts/creditentry/export.csv").status_code == 302


@pytest.mark.django_db
def test_revoking_in_the_admin_is_in_the_admins_log(operator):
    token_mint(email="alice@herder.test", credits=5)
    token = Token.objects.get()
    login(operator).post("/admin/accounts/token/", {"action": "revoke", "_selected_action": [token.pk]})
    entry = LogEntry.objects.get()
    assert entry.user == operator and entry.object_id == str(token.pk) and entry.change_message == "Revoked"


@pytest.mark.django_db
def test_running_golems_come_first_and_times_have_seconds_and_zone(viewer):
    for i in range(5):
        Golem.objects.create(webstrate=f"a{i}", state="killed", started=timezone.now())
    Golem.objects.create(
        webstrate="zz-running", state="running", container_id="c" * 64, started=timezone.now().replace(microsecond=0)
    )
    page = login(viewer).get("/admin/golems/golem/").content.decode()
    assert page.index(">zz-running<") < page.index(">a0<")
    assert timezone.now().strftime("%Y-%m-%d") in page and " UTC" in page
    detail = login(viewer).get(f"/admin/golems/golem/{Golem.objects.get(state='running').pk}/change/")
    assert b'id="golem-kill"' not in detail.content  # view-only staff get no buttons
    assert login(viewer).post(f"/admin/golems/golem/{Golem.objects.get(state='running').pk}/kill/").status_code == 403


@pytest.mark.docker
@pytest.mark.django_db
def test_the_golem_page_kills_through_the_service_and_logs_it(operator, docker_engine):
    golem = Golem.objects.create(
        webstrate="herder-test-killed",
        state="running",
        container_id="0" * 64,
        container_name="herder-golem-herder-test-killed",
        started=timezone.now(),
    )
    client = login(operator)
    assert b'id="golem-kill"' in client.get(f"/admin/golems/golem/{golem.pk}/change/").content
    assert client.post(f"/admin/golems/golem/{golem.pk}/kill/").status_code == 302
    assert Golem.objects.get().state == "killed"
    assert LogEntry.objects.get().change_message == "Killed"


def attach(path: str, headers: list) -> tuple[dict, int]:
    from herder.asgi import application

    async def run():
        communicator = WebsocketCommunicator(application, path, headers=headers)
        await communicator.connect()
        message = json.loads(await communicator.receive_from(timeout=10))
        closed = await communicator.receive_output(timeout=10)
        await communicator.disconnect()
        return message, closed.get("code")

    return async_to_sync(run)()


def session_cookie(user: User) -> bytes:
    client = login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.mark.django_db(transaction=True)
def test_the_staff_console_socket_wants_a_staff_session_from_the_herders_own_origin(operator, viewer, settings):
    settings.HERDER_PUBLIC_URL = "https://herder.example"
    token_mint(email="alice@herder.test", credits=5)
    daemon = Daemon.objects.create(
        owner=Account.objects.get(), name="web", full_name="web-x", image="i", state="killed", volume="herder-test-none"
    )
    path = f"/admin/daemons/daemon/{daemon.pk}/attach"
    own = [(b"host", b"herder.test"), (b"origin", b"http://herder.test")]
    cookie = session_cookie(operator)

    for headers in (
        [(b"host", b"herder.test"), (b"origin", b"http://web-x.daemons.herder.test"), (b"cookie", cookie)],
        [(b"host", b"herder.test"), (b"origin", b"null"), (b"cookie", cookie)],
        [(b"host", b"herder.test"), (b"cookie", cookie)],
        own,  # no session
        [*own, (b"cookie", session_cookie(viewer))],
    ):  # staff who may only view
        message, code = attach(path, headers)
        assert (message["code"], code) == ("permission_denied", 4403), headers
    # The operator from the admin's own origin gets through to the daemon (not running here).
    message, code = attach(path, [*own, (b"cookie", cookie)])
    assert (message["code"], code) == ("not_running", 4409)
    # Behind a proxy that rewrites Host, the public URL's origin is the herder's own.
    proxied = [(b"host", b"127.0.0.1:8000"), (b"origin", b"https://herder.example"), (b"cookie", cookie)]
    assert attach(path, proxied)[1] == 4409
    assert (
        attach(path, [(b"host", b"127.0.0.1:8000"), (b"origin", b"https://evil.example"), (b"cookie", cookie)])[1]
        == 4403
    )


@pytest.mark.django_db
def test_the_token_console_page_is_locked_down_and_holds_no_token():
    response = Client().get("/daemon/v1/console/web-x")
    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response["Referrer-Policy"] == "no-referrer"
    page = response.content.decode()
    assert 'data-socket="/daemon/v1/attach/web-x"' in page and "<script>" not in page
    evil = Client().get("/daemon/v1/console/%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E").content.decode()
    assert "<script>alert(1)" not in evil
    post = Client().post("/daemon/v1/console/web-x")
    assert post.status_code == 405 and post.json()["code"] == "method_not_allowed"
