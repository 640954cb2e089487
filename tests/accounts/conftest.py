"""Accounts, tokens and clients shared by the tests that need a token.

Other apps' tests reuse them with `from tests.accounts.conftest import *`
(or by name): `alice` owns things, `bob` must not see them.
"""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import Account
from accounts.services import token_mint

ALICE_EMAIL = "alice@herder.test"
BOB_EMAIL = "bob@herder.test"
ALICE_CREDITS = 1000
BOB_CREDITS = 500

__all__ = [
    "alice_token",
    "alice",
    "bob_token",
    "bob",
    "alice_client",
    "bob_client",
    "anon_client",
    "staff",
    "staff_client",
]


@pytest.fixture
def alice_token(db) -> str:
    """A freshly minted JWT for alice, granting her ALICE_CREDITS."""
    return token_mint(email=ALICE_EMAIL, credits=ALICE_CREDITS)


@pytest.fixture
def alice(alice_token) -> Account:
    return Account.objects.get(email=ALICE_EMAIL)


@pytest.fixture
def bob_token(db) -> str:
    return token_mint(email=BOB_EMAIL, credits=BOB_CREDITS)


@pytest.fixture
def bob(bob_token) -> Account:
    return Account.objects.get(email=BOB_EMAIL)


def _api_client(raw: str | None) -> APIClient:
    client = APIClient()
    if raw:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def alice_client(alice_token) -> APIClient:
    """An API client sending alice's token as `Authorization: Bearer`."""
    return _api_client(alice_token)


@pytest.fixture
def bob_client(bob_token) -> APIClient:
    return _api_client(bob_token)


@pytest.fixture
def anon_client() -> APIClient:
    return _api_client(None)


@pytest.fixture
def staff(db) -> User:
    """An operator: a superuser who may use the admin."""
    return User.objects.create_superuser("operator", "operator@herder.test", "pw")


@pytest.fixture
def staff_client(staff) -> Client:
    """A Django test client logged in to the admin as `staff`."""
    client = Client()
    client.force_login(staff)
    return client
