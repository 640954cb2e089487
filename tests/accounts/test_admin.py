"""The operator's view: who spent what, when, on which daemon."""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from accounts.models import CreditEntry, Token
from accounts.services import account_balance, account_ledger_sum, credits_spend, token_mint
from tests.accounts.conftest import ALICE_CREDITS

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.accounts.urls")]


@pytest.fixture
def history(alice, bob):
    credits_spend(account=alice, amount=120, subject="web-alice", note="120 s running")
    credits_spend(account=bob, amount=30, subject="db-bob", note="30 s running")


def test_account_pages_show_balances_tokens_and_ledger(staff_client, alice, history):
    listing = staff_client.get("/admin/accounts/account/", {"q": "alice"})
    assert listing.status_code == 200
    assert b"alice@herder.test" in listing.content and b"bob@herder.test" not in listing.content
    assert str(ALICE_CREDITS - 120).encode() in listing.content

    detail = staff_client.get(f"/admin/accounts/account/{alice.pk}/change/")
    assert detail.status_code == 200
    assert b"web-alice" in detail.content and b"db-bob" not in detail.content
    assert Token.objects.get(account=alice).jti.encode() in detail.content
    assert b'name="_save"' not in detail.content


def test_ledger_is_searchable_by_email_and_subject(staff_client, history):
    by_email = staff_client.get("/admin/accounts/creditentry/", {"q": "bob@herder.test"})
    assert by_email.status_code == 200
    assert b"db-bob" in by_email.content and b"web-alice" not in by_email.content

    by_subject = staff_client.get("/admin/accounts/creditentry/", {"q": "web-alice"})
    assert b"web-alice" in by_subject.content and b"db-bob" not in by_subject.content


def test_ledger_filters_by_kind_and_date(staff_client, history):
    spends = staff_client.get("/admin/accounts/creditentry/", {"kind__exact": "spend"})
    assert spends.status_code == 200
    assert spends.context["cl"].result_count == 2

    grants = staff_client.get("/admin/accounts/creditentry/", {"kind__exact": "grant"})
    assert grants.context["cl"].result_count == 2

    this_year = staff_client.get("/admin/accounts/creditentry/", {"created__year": timezone.now().year})
    assert this_year.status_code == 200 and this_year.context["cl"].result_count == 4
    long_ago = staff_client.get("/admin/accounts/creditentry/", {"created__year": 2000})
    assert long_ago.context["cl"].result_count == 0


def test_ledger_entries_cannot_be_changed_or_deleted(staff_client, history):
    entry = CreditEntry.objects.filter(kind="spend").first()

    page = staff_client.get(f"/admin/accounts/creditentry/{entry.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert staff_client.post(f"/admin/accounts/creditentry/{entry.pk}/delete/").status_code == 403
    assert CreditEntry.objects.filter(pk=entry.pk).exists()


def test_a_grant_made_in_the_admin_is_a_ledger_row(staff_client, alice):
    form = staff_client.get("/admin/accounts/creditentry/add/", {"account": alice.pk})
    assert form.status_code == 200

    response = staff_client.post(
        "/admin/accounts/creditentry/add/",
        {"account": alice.pk, "kind": "grant", "amount": "500", "note": "conference"},
    )

    assert response.status_code == 302
    entry = CreditEntry.objects.get(kind="grant", note__startswith="conference")
    assert entry.amount == 500 and "operator" in entry.note and entry.token is None
    assert account_balance(alice) == ALICE_CREDITS + 500 == account_ledger_sum(alice)


def test_an_adjustment_made_in_the_admin_may_take_credits(staff_client, alice):
    response = staff_client.post(
        "/admin/accounts/creditentry/add/", {"account": alice.pk, "kind": "adjust", "amount": "-200", "note": ""}
    )

    assert response.status_code == 302
    assert account_balance(alice) == ALICE_CREDITS - 200 == account_ledger_sum(alice)


@pytest.mark.parametrize("kind,amount", [("adjust", -ALICE_CREDITS - 1), ("grant", -5), ("grant", 0)])
def test_the_admin_refuses_entries_that_would_break_the_ledger(staff_client, alice, kind, amount):
    response = staff_client.post(
        "/admin/accounts/creditentry/add/", {"account": alice.pk, "kind": kind, "amount": str(amount), "note": ""}
    )

    assert response.status_code == 200 and response.context["adminform"].form.errors
    assert account_balance(alice) == ALICE_CREDITS and CreditEntry.objects.count() == 1


def test_the_admin_cannot_make_spend_entries(staff_client, alice):
    response = staff_client.post(
        "/admin/accounts/creditentry/add/", {"account": alice.pk, "kind": "spend", "amount": "-5", "note": ""}
    )

    assert response.status_code == 200 and CreditEntry.objects.count() == 1


def test_token_pages_render_and_search_by_email(staff_client, alice, bob):
    listing = staff_client.get("/admin/accounts/token/", {"q": "alice"})

    assert listing.status_code == 200 and listing.context["cl"].result_count == 1
    token = Token.objects.get(account=alice)
    assert staff_client.get(f"/admin/accounts/token/{token.pk}/change/").status_code == 200


def test_revoking_in_the_admin_takes_effect_on_the_next_request(staff_client, alice_client, alice, bob_client):
    assert alice_client.get("/test/whoami").status_code == 200
    token = Token.objects.get(account=alice)

    response = staff_client.post("/admin/accounts/token/", {"action": "revoke", "_selected_action": [token.pk]})

    assert response.status_code == 302
    refused = alice_client.get("/test/whoami")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert bob_client.get("/test/whoami").status_code == 200
    assert staff_client.get("/admin/accounts/token/", {"revoked__isnull": "False"}).context["cl"].result_count == 1
    # The account keeps its credits for its other tokens.
    assert account_balance(alice) == ALICE_CREDITS
    assert alice_client.get("/test/whoami", {"token": token_mint(email=alice.email, credits=0)}).status_code == 401


def test_an_operator_who_may_only_view_cannot_revoke(alice, alice_client):
    from django.contrib.auth.models import Permission

    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_token", "view_account"]))
    client = Client()
    client.force_login(viewer)
    token = Token.objects.get(account=alice)

    assert client.get("/admin/accounts/token/").status_code == 200
    client.post("/admin/accounts/token/", {"action": "revoke", "_selected_action": [token.pk]})

    assert Token.objects.get(pk=token.pk).revoked is None


def test_admin_pages_need_a_login():
    assert Client().get("/admin/accounts/account/").status_code == 302
