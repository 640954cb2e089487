from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import Account, CreditEntry, Token
from accounts.services import (
    account_balance,
    account_ledger_sum,
    credits_grant,
    credits_spend,
    token_authenticate,
    token_mint,
    token_revoke,
)
from herder.errors import AlreadyGranted, BadInput, InsufficientCredits, InvalidToken
from tests.accounts.conftest import ALICE_CREDITS, ALICE_EMAIL

pytestmark = pytest.mark.django_db


def claims(raw: str) -> dict:
    return jwt.decode(raw, settings.HERDER_TOKEN_PUBLIC_KEY, algorithms=["RS512"], issuer="herder")


def test_mint_returns_an_rs512_token_with_the_herder_claims():
    raw = token_mint(email="carol@herder.test", credits=42)

    assert jwt.get_unverified_header(raw)["alg"] == "RS512"
    payload = claims(raw)
    assert set(payload) == {"sub", "jti", "crd", "iat", "exp", "iss", "app"}
    assert payload["sub"] == "carol@herder.test"
    assert payload["crd"] == 42
    assert payload["iss"] == "herder" and payload["app"] == "herder"
    assert payload["exp"] - payload["iat"] == int(settings.HERDER_TOKEN_LIFETIME.total_seconds())
    token = Token.objects.get(jti=payload["jti"])
    assert token.account.email == "carol@herder.test" and token.credits == 42
    assert int(token.expires.timestamp()) == payload["exp"]


def test_mint_defaults_to_30000_credits():
    raw = token_mint(email="carol@herder.test")

    assert claims(raw)["crd"] == 30000
    assert account_balance(Account.objects.get(email="carol@herder.test")) == 30000


def test_mint_honours_a_lifetime():
    payload = claims(token_mint(email="carol@herder.test", credits=1, lifetime=timedelta(minutes=5)))

    assert payload["exp"] - payload["iat"] == 300


def test_mint_grants_the_credits_once_as_a_ledger_row(alice_token, alice):
    entry = CreditEntry.objects.get(account=alice)

    assert entry.kind == "grant" and entry.amount == ALICE_CREDITS
    assert entry.token.jti == claims(alice_token)["jti"]
    assert account_balance(alice) == ALICE_CREDITS == account_ledger_sum(alice)


def test_credits_accumulate_per_email_across_tokens(alice, alice_token):
    second = token_mint(email="ALICE@Herder.Test", credits=250)

    assert Account.objects.count() == 1
    assert account_balance(alice) == ALICE_CREDITS + 250 == account_ledger_sum(alice)
    # Every token of the account spends the same balance.
    assert token_authenticate(second)[0] == token_authenticate(alice_token)[0] == alice
    assert claims(second)["sub"] == ALICE_EMAIL


def test_a_token_with_zero_credits_grants_nothing():
    raw = token_mint(email="carol@herder.test", credits=0)

    account, token = token_authenticate(raw)
    assert account.balance == 0 and not CreditEntry.objects.exists()


def test_a_second_grant_for_the_same_token_is_refused(alice, alice_token):
    token = Token.objects.get(account=alice)

    with pytest.raises(AlreadyGranted):
        credits_grant(account=alice, amount=token.credits, token=token)

    assert account_balance(alice) == ALICE_CREDITS
    assert CreditEntry.objects.filter(token=token).count() == 1


def test_the_database_itself_refuses_a_second_grant_row(alice):
    token = Token.objects.get(account=alice)

    with pytest.raises(IntegrityError), transaction.atomic():
        CreditEntry.objects.create(account=alice, amount=5, kind="grant", token=token)


# Any identifier names an account (tests/accounts/test_identifiers.py); these are not one.
@pytest.mark.parametrize(
    "email",
    [
        "",
        " alice",
        "alice@herder.test ",
        "alice\t",
        "\u200balice",
        "alice@herder.test\nbcc: x@y.z",
        "x" * 250 + "@herder.test",
    ],
)
def test_mint_refuses_a_malformed_identifier_and_creates_nothing(email):
    with pytest.raises(BadInput):
        token_mint(email=email, credits=10)

    assert not Account.objects.exists() and not Token.objects.exists()


@pytest.mark.parametrize("credits", [-1, 1.5, "10", True, 10**16])
def test_mint_refuses_bad_credits_and_creates_nothing(credits):
    with pytest.raises(BadInput):
        token_mint(email="carol@herder.test", credits=credits)

    assert not Account.objects.exists() and not Token.objects.exists()


def test_spend_takes_credits_and_records_the_subject(alice):
    spent = credits_spend(account=alice, amount=300, subject="web-0123", note="300 s running")

    assert spent == 300
    assert account_balance(alice) == ALICE_CREDITS - 300 == account_ledger_sum(alice)
    entry = CreditEntry.objects.get(kind="spend")
    assert (entry.amount, entry.subject, entry.note) == (-300, "web-0123", "300 s running")


def test_spend_never_goes_below_zero_and_returns_what_it_took(alice):
    assert credits_spend(account=alice, amount=ALICE_CREDITS + 500, subject="d") == ALICE_CREDITS
    assert account_balance(alice) == 0

    assert credits_spend(account=alice, amount=10, subject="d") == 0
    assert account_balance(alice) == 0 == account_ledger_sum(alice)
    assert CreditEntry.objects.filter(kind="spend").count() == 1


def test_spend_of_zero_records_nothing(alice):
    assert credits_spend(account=alice, amount=0) == 0
    assert CreditEntry.objects.filter(kind="spend").count() == 0


def test_spend_refuses_a_negative_amount(alice):
    with pytest.raises(BadInput):
        credits_spend(account=alice, amount=-5)

    assert account_balance(alice) == ALICE_CREDITS


def test_an_adjustment_may_take_credits_but_not_below_zero(alice):
    credits_grant(account=alice, amount=-400, kind="adjust", note="refund reversed")
    assert account_balance(alice) == ALICE_CREDITS - 400

    with pytest.raises(InsufficientCredits):
        credits_grant(account=alice, amount=-ALICE_CREDITS, kind="adjust")

    assert account_balance(alice) == ALICE_CREDITS - 400 == account_ledger_sum(alice)
    assert CreditEntry.objects.filter(kind="adjust").count() == 1


@pytest.mark.parametrize("amount,kind", [(0, "grant"), (-5, "grant"), (0, "adjust"), (5, "spend")])
def test_grant_refuses_amounts_and_kinds_that_are_not_allowed(alice, amount, kind):
    with pytest.raises(BadInput):
        credits_grant(account=alice, amount=amount, kind=kind)

    assert CreditEntry.objects.count() == 1


def test_the_database_refuses_a_negative_balance(alice):
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.filter(pk=alice.pk).update(balance=-1)


def test_ledger_rows_cannot_be_changed_or_deleted(alice):
    entry = CreditEntry.objects.get(account=alice)

    entry.amount = 10**6
    with pytest.raises(ValueError):
        entry.save()
    with pytest.raises(ValueError):
        entry.delete()
    assert CreditEntry.objects.get(pk=entry.pk).amount == ALICE_CREDITS


def test_authenticate_returns_the_account_and_token(alice, alice_token):
    account, token = token_authenticate(alice_token)

    assert account == alice and token.jti == claims(alice_token)["jti"]


def test_authenticate_accepts_surrounding_whitespace(alice, alice_token):
    assert token_authenticate(f"  {alice_token}\n")[0] == alice


def test_revoked_tokens_are_refused_but_the_account_keeps_its_credits(alice, alice_token):
    token = Token.objects.get(account=alice)
    token_revoke(token=token)
    first_revoked = token.revoked
    token_revoke(token=token)

    with pytest.raises(InvalidToken, match="revoked"):
        token_authenticate(alice_token)
    assert Token.objects.get(pk=token.pk).revoked == first_revoked
    assert account_balance(alice) == ALICE_CREDITS
    # A new token of the same email still works and spends the same balance.
    assert token_authenticate(token_mint(email=ALICE_EMAIL, credits=1))[0] == alice


def test_long_subjects_and_notes_are_cut_to_fit_the_ledger(alice):
    credits_spend(account=alice, amount=1, subject="s" * 500, note="n" * 900)

    entry = CreditEntry.objects.get(kind="spend")
    assert len(entry.subject) == 200 and len(entry.note) == 500
