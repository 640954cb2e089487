"""Client identity, rates and slots (herder/admission.py)."""

import pytest
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured

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
    with pytest.raises(ImproperlyConfigured):
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


# --- Waiting for a slot: a bounded, fair queue --------------------------------

import asyncio  # noqa: E402


@pytest.fixture
def queued(settings):
    settings.HERDER_TEST_PER_CLIENT = 1
    settings.HERDER_TEST_PER_ACCOUNT = 2
    settings.HERDER_TEST_TOTAL = 2
    settings.HERDER_TEST_QUEUE = 2
    settings.HERDER_TEST_WAIT = 5
    return Slots(
        "thing",
        per_client="HERDER_TEST_PER_CLIENT",
        per_account="HERDER_TEST_PER_ACCOUNT",
        total="HERDER_TEST_TOTAL",
        queue="HERDER_TEST_QUEUE",
        queue_wait="HERDER_TEST_WAIT",
    )


async def started(coro) -> asyncio.Task:
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0.01)
    return task


def test_a_waiter_gets_the_slot_its_client_frees(queued):
    async def scenario():
        await queued.wait("a")
        second = await started(queued.wait("a"))
        assert not second.done() and queued.waiting == 1
        queued.release("a")
        await asyncio.wait_for(second, 1)
        assert queued.in_use == 1 and queued.waiting == 0

    asyncio.run(scenario())


def test_a_client_waits_for_no_more_than_it_may_run(queued):
    async def scenario():
        await queued.wait("a")
        waiting = await started(queued.wait("a"))
        with pytest.raises(TooManyRequests) as refused:
            await queued.wait("a")
        assert refused.value.wait >= 1
        waiting.cancel()

    asyncio.run(scenario())
    assert recent_refusals()["thing_per_client"] >= 1


def test_another_client_is_served_while_one_is_at_its_limit(queued):
    async def scenario():
        await queued.wait("a")
        waiting = await started(queued.wait("a"))
        await asyncio.wait_for(queued.wait("b"), 1)  # at once, not behind a's waiter
        assert queued.in_use == 2
        waiting.cancel()

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once(queued):
    async def scenario():
        await queued.wait("a")
        await queued.wait("b")
        waiters = [await started(queued.wait(c)) for c in ("c", "d")]
        with pytest.raises(TooManyRequests):
            await queued.wait("e")
        for each in waiters:
            each.cancel()

    asyncio.run(scenario())
    assert recent_refusals()["thing_queue_full"] >= 1


def test_a_freed_slot_goes_to_the_client_running_fewest(queued):
    async def scenario():
        await queued.wait("a")
        await queued.wait("b")
        # Total full. a waits first, then c, who runs nothing yet.
        queued.release("b")
        await queued.wait("a2")  # the slot b freed is taken at once: nobody waits
        a_waits = await started(queued.wait("a"))
        c_waits = await started(queued.wait("c"))
        queued.release("a2")
        await asyncio.wait_for(c_waits, 1)
        assert not a_waits.done()  # a already runs one; c ran none
        a_waits.cancel()

    asyncio.run(scenario())


def test_a_token_holder_has_the_account_limit(queued):
    async def scenario():
        await queued.wait("account:alice@example.org")
        await asyncio.wait_for(queued.wait("account:alice@example.org"), 1)
        assert queued.in_use == 2

    asyncio.run(scenario())


def test_waiting_too_long_is_a_429_and_leaves_the_queue(queued, settings):
    settings.HERDER_TEST_WAIT = 0.1

    async def scenario():
        await queued.wait("a")
        await queued.wait("b")
        with pytest.raises(TooManyRequests):
            await queued.wait("c")
        assert queued.waiting == 0

    asyncio.run(scenario())
    assert recent_refusals()["thing_queue_timeout"] >= 1


def test_a_cancelled_waiter_leaves_and_a_slot_handed_to_it_is_passed_on(queued):
    async def scenario():
        await queued.wait("a")
        await queued.wait("b")
        c_waits = await started(queued.wait("c"))
        d_waits = await started(queued.wait("d"))
        c_waits.cancel()
        await asyncio.sleep(0.01)
        assert queued.waiting == 1
        queued.release("a")
        await asyncio.wait_for(d_waits, 1)
        assert queued.in_use == 2 and queued.waiting == 0

        # Handed a slot and cancelled before it ran: the slot is not lost.
        e_waits = await started(queued.wait("e"))
        queued.release("b")
        e_waits.cancel()
        await asyncio.sleep(0.01)
        assert queued.in_use == 1

    asyncio.run(scenario())


def test_rate_spent_counts_nothing_itself():
    from herder.admission import rate_count, rate_spent

    for _ in range(5):
        rate_spent("test-failures", "addr:a", "2/h")
    rate_count("test-failures", "addr:a", "2/h")
    rate_spent("test-failures", "addr:a", "2/h")
    rate_count("test-failures", "addr:a", "2/h")
    with pytest.raises(TooManyRequests):
        rate_spent("test-failures", "addr:a", "2/h")


def test_a_test_client_request_has_a_scope_with_its_token_and_forwarded_for():
    from django.test import RequestFactory

    from herder.admission import request_scope

    request = RequestFactory().post(
        "/x?token=abc", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="1.2.3.4", HTTP_AUTHORIZATION="Bearer t"
    )
    scope = request_scope(request)
    assert scope["client"][0] == "10.0.0.1" and scope["query_string"] == b"token=abc"
    assert dict(scope["headers"]) == {b"x-forwarded-for": b"1.2.3.4", b"authorization": b"Bearer t"}
