"""The admin: state-changing actions need the change permission, audit rows are append-only.

A view-only operator (staff with every view_* permission and nothing else) may look at
everything and change nothing; a superuser may operate, but deletes no audit row and no row
of something still running.
"""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.forms.models import model_to_dict
from django.test import Client, RequestFactory
from django.utils import timezone

from accounts.models import Account, CreditEntry, Token
from accounts.services import account_balance, token_mint
from daemons.models import Daemon
from golems.models import Golem, GolemPresence
from minions.models import MinionRun

pytestmark = pytest.mark.django_db

# Rows that record what happened: never edited nor deleted from the admin.
AUDIT_MODELS = (MinionRun, CreditEntry, Account, Token)
# Rows standing for something that may be running: never deleted from the admin.
LIVE_MODELS = (Golem, GolemPresence)


@pytest.fixture
def viewer() -> User:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    return user


@pytest.fixture
def superuser() -> User:
    return User.objects.create_superuser("root", "root@herder.test", "pw")


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _request(user: User):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


@pytest.fixture
def rows():
    """One row of every kind the admin shows; nothing here runs in Docker."""
    token_mint(email="alice@herder.test", credits=100)
    alice = Account.objects.get()
    now = timezone.now()
    MinionRun.objects.create(env="python", image="herder/minion-python:latest", exit_code=0)
    Golem.objects.create(
        webstrate="herder-test-admin",
        state=Golem.State.RUNNING,
        container_id="0" * 64,
        container_name="herder-golem-herder-test-admin",
        started=now,
    )
    GolemPresence.objects.create(webstrate="herder-test-admin", channel="x", connected=now, seen=now)
    Daemon.objects.create(
        owner=alice,
        name="web",
        full_name="web-jti",
        image="herder/daemon-echo:latest",
        state=Daemon.State.RUNNING,
        container_id="0" * 64,
        volume="herder-test-admin-vol",
        started=now,
    )


def _snapshot() -> dict:
    models = (*AUDIT_MODELS, *LIVE_MODELS, Daemon)
    return {m.__name__: sorted((o.pk, repr(model_to_dict(o))) for o in m.objects.all()) for m in models}


def _custom_actions(model_admin, user: User) -> set[str]:
    return set(model_admin.get_actions(_request(user))) - {"delete_selected"}


def test_every_custom_action_is_offered_to_superusers_and_hidden_from_viewers(viewer, superuser):
    offered = {}
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in ("accounts", "minions", "golems", "daemons"):
            continue
        offered[model.__name__] = _custom_actions(model_admin, superuser)
        assert not _custom_actions(model_admin, viewer), model.__name__
        assert "delete_selected" not in model_admin.get_actions(_request(viewer)), model.__name__
    # A new action lands here and in the test below.
    assert offered == {
        "Account": set(),
        "Token": {"revoke"},
        "CreditEntry": set(),
        "MinionRun": set(),
        "Golem": {"reset_golems", "kill_golems"},
        "GolemPresence": set(),
        "Daemon": {"stop_daemons"},
    }


@pytest.mark.parametrize(
    "url,action",
    [
        ("/admin/accounts/token/", "revoke"),
        ("/admin/golems/golem/", "reset_golems"),
        ("/admin/golems/golem/", "kill_golems"),
        ("/admin/daemons/daemon/", "stop_daemons"),
        ("/admin/minions/minionrun/", "delete_selected"),
        ("/admin/accounts/creditentry/", "delete_selected"),
        ("/admin/daemons/daemon/", "delete_selected"),
        ("/admin/golems/golem/", "delete_selected"),
    ],
)
def test_a_viewer_posting_an_action_changes_nothing(viewer, rows, url, action):
    client = _client(viewer)
    assert client.get(url).status_code == 200
    model = {"token": Token, "golem": Golem, "daemon": Daemon, "minionrun": MinionRun, "creditentry": CreditEntry}[
        url.rstrip("/").rsplit("/", 1)[-1]
    ]
    before = _snapshot()

    response = client.post(
        url, {"action": action, "_selected_action": list(model.objects.values_list("pk", flat=True)), "post": "yes"}
    )

    assert response.status_code in (200, 302, 403)
    assert _snapshot() == before


def test_a_viewer_cannot_grant_credits(viewer, rows):
    alice = Account.objects.get()
    client = _client(viewer)
    before = _snapshot()

    response = client.post(
        "/admin/accounts/creditentry/add/", {"account": alice.pk, "kind": "grant", "amount": "500", "note": ""}
    )

    assert response.status_code == 403
    assert _snapshot() == before and account_balance(alice) == 100


@pytest.mark.parametrize("path", ["minions/minionrun", "golems/golem", "golems/golempresence", "daemons/daemon"])
def test_a_viewer_cannot_delete_through_the_delete_page(viewer, rows, path):
    model = {"minionrun": MinionRun, "golem": Golem, "golempresence": GolemPresence, "daemon": Daemon}[
        path.split("/")[1]
    ]
    before = _snapshot()

    response = _client(viewer).post(f"/admin/{path}/{model.objects.get().pk}/delete/", {"post": "yes"})

    assert response.status_code == 403 and _snapshot() == before


@pytest.mark.parametrize("model", [*AUDIT_MODELS, *LIVE_MODELS], ids=lambda m: m.__name__)
def test_a_superuser_cannot_delete_or_edit_audit_rows_nor_rows_of_running_things(superuser, rows, model):
    model_admin = admin.site._registry[model]
    request = _request(superuser)
    obj = model.objects.first()
    assert not model_admin.has_delete_permission(request, obj)
    assert not model_admin.has_change_permission(request, obj)
    assert "delete_selected" not in model_admin.get_actions(request)
    client = _client(superuser)
    base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
    before = _snapshot()

    assert client.post(f"{base}{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(base, {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"})
    # The change page shows the row and saves nothing.
    page = client.get(f"{base}{obj.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.post(f"{base}{obj.pk}/change/", {}).status_code == 403

    assert _snapshot() == before


def test_a_superuser_still_revokes_tokens(superuser, rows):
    """The positive control for the refusals above: the same POST from an operator works."""
    token = Token.objects.get()
    response = _client(superuser).post("/admin/accounts/token/", {"action": "revoke", "_selected_action": [token.pk]})
    assert response.status_code == 302
    assert Token.objects.get().revoked is not None
