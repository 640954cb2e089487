"""Failed admin logins are slowed per client and per username (herder/throttle.py)."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def operator(settings):
    settings.HERDER_ADMIN_LOGIN_RATE = "3/h"
    return User.objects.create_superuser("operator", "op@herder.test", "right")


def login(username: str, password: str, address: str = "198.51.100.1"):
    return Client(REMOTE_ADDR=address).post("/admin/login/", {"username": username, "password": password})


def test_failed_logins_past_the_rate_are_429_even_with_the_right_password():
    assert [login("operator", "guess").status_code for _ in range(3)] == [200, 200, 200]

    refused = login("operator", "right")
    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_requests" and int(refused["Retry-After"]) >= 1


def test_guessing_one_username_from_many_addresses_is_slowed_too():
    for n in range(3):
        login("operator", "guess", address=f"198.51.100.{10 + n}")
    assert login("operator", "right", address="198.51.100.20").status_code == 429
    # Another username from a fresh address is not.
    User.objects.create_superuser("other", "other@herder.test", "pw")
    assert login("other", "pw", address="198.51.100.21").status_code == 302


def test_a_successful_login_is_not_counted():
    for _ in range(4):
        assert login("operator", "right").status_code == 302


def test_the_login_page_still_renders():
    assert Client().get("/admin/login/").status_code == 200
