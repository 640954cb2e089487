"""Client identity, rates and slots (herder/admission.py)."""

import pytest
from django.core.cache import cache

from herder.admission import Rate, Slots, client_address, client_of, rate_check, recent_refusals
from herder.errors import TooManyRequests


def scope(peer: str, *forwarded: str) -> dict:
    return {"client": (peer, 5555), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_forwarded_for_is_ignored_from_an_untrusted_peer(settings):
    settings.HERDER_TRUSTED_PROXIES = []
    assert client_address(scope("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


def test_a_trusted_proxy_names_the_right_most_untrusted_hop(settings):
    settings.HERDER_TRUSTED_PROXIES = ["127.0.0.0/8", "10.0.0.5"]
    # The client prepended a lie; our proxies appended the truth.
    assert client_address(scope("127.0.0.1", "1.2.3.4, 198.51.100.7, 10.0.0.5")) == "198.51.100.7"
    assert client_address(scope("127.0.0.1", "1.2.3.4", "198.51.100.8")) == "198.51.100.8"


def test_a_token_holder_counts_by_account():
    class Account:
        email = "alice@example.org"

    assert client_of({**scope("127.0.0.1"), "account": Account()}) == "account:alice@example.org"
    assert client_of(scope("127.0.0.1")) == "addr:127.0.0.1"


def test_rates_parse():
    assert Rate.parse("20/h") == Rate(20, 3600)
    assert Rate.parse("5/10s") == Rate(5, 10)
    assert Rate.parse("") is None and Rate.parse("0") is None
    with pytest.raises(Exception):
        Rate.parse("lots")


def test_a_rate_refuses_past_its_count_with_retry_after():
    cache.clear()
    for _ in range(3):
        rate_check("test-bucket", "addr:a", "3/h")
    with pytest.raises(TooManyRequests) as refused:
        rate_check("test-bucket", "addr:a", "3/h")
    assert 1 <= refused.value.wait <= 3600
    rate_check("test-bucket", "addr:b", "3/h")  # another client is not affected
    assert recent_refusals()["test-bucket"] >= 1


def test_slots_refuse_per_client_and_in_total(settings):
    settings.HERDER_TEST_PER_CLIENT = 2
    settings.HERDER_TEST_TOTAL = 3
    slots = Slots("thing", per_client="HERDER_TEST_PER_CLIENT", total="HERDER_TEST_TOTAL")
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(TooManyRequests):
        slots.acquire("a")
    slots.acquire("b")
    with pytest.raises(TooManyRequests):
        slots.acquire("c")
    slots.release("a")
    with slots.hold("c"):
        assert slots.in_use == 3
    assert slots.snapshot()["in_use"] == 2
