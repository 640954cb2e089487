"""Guessing the token password is slowed: HERDER_TOKEN_GENERATE_RATE wrong
passwords per client, then 429 before the password is even judged."""

import pytest
from django.test import Client

from accounts.models import Account

pytestmark = pytest.mark.django_db

PASSWORD = "right-password"


@pytest.fixture(autouse=True)
def configured(settings):
    settings.HERDER_TOKEN_PASSWORD = PASSWORD
    settings.HERDER_TOKEN_GENERATE_RATE = "3/h"


def generate(password: str, address: str = "198.51.100.1"):
    return Client(REMOTE_ADDR=address).post("/token/v1/generate", {"password": password, "email": "eve@herder.test"})


def test_wrong_passwords_past_the_rate_are_refused_even_the_right_one():
    assert [generate("guess").status_code for _ in range(3)] == [401, 401, 401]

    refused = generate("guess")
    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_requests"
    assert 1 <= int(refused["Retry-After"]) <= 3600
    # Not even the right password is judged now: nothing to learn by guessing.
    assert generate(PASSWORD).status_code == 429
    assert not Account.objects.exists()


def test_another_client_is_not_slowed():
    for _ in range(4):
        generate("guess")
    assert generate(PASSWORD, address="198.51.100.2").status_code == 200


def test_right_passwords_do_not_count():
    for _ in range(5):
        assert generate(PASSWORD).status_code == 200


def test_a_client_behind_a_trusted_proxy_is_its_forwarded_address(settings):
    settings.HERDER_TRUSTED_PROXIES = ["127.0.0.1"]
    proxy = Client(REMOTE_ADDR="127.0.0.1")
    for _ in range(3):
        proxy.post("/token/v1/generate", {"password": "guess"}, HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert (
        proxy.post("/token/v1/generate", {"password": "guess"}, HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 429
    )
    assert (
        proxy.post(
            "/token/v1/generate", {"password": PASSWORD, "email": "x@herder.test"}, HTTP_X_FORWARDED_FOR="203.0.113.8"
        ).status_code
        == 200
    )
