"""Accounts are named by an email address or any other identifier (issue 11.1).

The original's README: "email: the email address (or any identifier) for the owner
of the token". Emails are case-insensitive; other identifiers are kept exactly.
"""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Account, CreditEntry, Token
from accounts.services import account_identifier, token_authenticate
from herder.errors import BadInput

pytestmark = pytest.mark.django_db

PASSWORD = "identifier-password"


@pytest.fixture
def password(settings) -> str:
    settings.HERDER_TOKEN_PASSWORD = PASSWORD
    return PASSWORD


@pytest.mark.parametrize(
    "identifier",
    [
        "carol",
        "Carol",
        "user-1234",
        "github:Octocat",
        "https://webstrates.example/alice",
        "ünïcödé-名前",
        "a",
        "x" * 254,
        "two words",
        "carol@localhost-without-tld",
    ],
)
def test_generate_accepts_any_identifier_and_keeps_it_exactly(anon_client, password, identifier):
    response = anon_client.post("/token/v1/generate", {"password": password, "email": identifier, "credits": "5"})

    assert response.status_code == 200, response.content
    assert response.json()["email"] == identifier
    account, token = token_authenticate(response.json()["token"])
    assert account.email == identifier and account.balance == 5


def test_other_identifiers_are_case_sensitive_and_emails_are_not(anon_client, password):
    for name in ("Carol", "carol", "Carol@Herder.Test", "carol@herder.test"):
        assert (
            anon_client.post("/token/v1/generate", {"password": password, "email": name, "credits": "1"}).status_code
            == 200
        )

    assert sorted(Account.objects.values_list("email", "balance")) == [
        ("Carol", 1),
        ("carol", 1),
        ("carol@herder.test", 2),
    ]


@pytest.mark.parametrize(
    "identifier,why",
    [
        ("", "required"),
        ("x" * 255, "at most 254"),
        (" carol", "whitespace"),
        ("carol\n", "whitespace"),
        ("ca\x00rol", "Null characters"),  # DRF refuses it before the service does
        ("ca\x1brol", "U+001B"),
        ("ca\u200brol", "U+200B"),  # zero-width space
        ("ca\u202erol", "U+202E"),  # right-to-left override
        ("ca\u2028rol", "U+2028"),  # line separator
    ],
)
def test_generate_refuses_identifiers_that_are_empty_long_or_hold_invisible_characters(
    anon_client, password, identifier, why
):
    response = anon_client.post("/token/v1/generate", {"password": password, "email": identifier})

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "bad_input" and why in response.json()["detail"]
    assert not Account.objects.exists() and not Token.objects.exists() and not CreditEntry.objects.exists()


def test_a_json_body_with_an_identifier_of_another_type_is_refused(anon_client, password):
    response = anon_client.post("/token/v1/generate", {"password": password, "email": ["a"]}, format="json")

    assert response.status_code == 400 and not Account.objects.exists()


def test_identifiers_are_unicode_normalised():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert account_identifier(decomposed) == account_identifier(composed) == composed


def test_the_rules_in_one_place():
    assert account_identifier("Alice@Example.ORG") == "alice@example.org"
    assert account_identifier("Alice") == "Alice"
    with pytest.raises(BadInput):
        account_identifier(None)


def test_mint_token_takes_any_identifier():
    out = StringIO()
    call_command("mint_token", "-e", "Operator Carol", "-c", "3", stdout=out)

    account, _ = token_authenticate(out.getvalue().strip())
    assert account.email == "Operator Carol" and account.balance == 3


def test_mint_token_refuses_a_control_character():
    with pytest.raises(CommandError, match="U\\+0007"):
        call_command("mint_token", "-e", "bell\x07", stdout=StringIO())
    assert not Account.objects.exists()
