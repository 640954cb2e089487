"""Per-client limits across herder processes: each tells the others, through
a real Redis, what its clients hold (herder/sharedslots.py). Two SlotSharing
objects stand for two processes here; the served test runs two real herds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
import uuid

import pytest
import redis
from asgiref.sync import async_to_sync
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from herder.admission import Slots
from herder.errors import TooManyRequests
from herder.sharedslots import SlotSharing
from tests.herder.test_workers import _redis_url, deployment, wait_for  # noqa: F401

pytestmark = pytest.mark.django_db

CLIENT = "addr:198.51.100.70"


@pytest.fixture
def limits(settings):
    settings.HERDER_TEST_SHARED_PER_CLIENT = 2
    settings.HERDER_TEST_SHARED_TOTAL = 10
    settings.HERDER_TEST_SHARED_QUEUE = 4
    settings.HERDER_TEST_SHARED_WAIT = 10


def two_processes(interval: float = 0.2):
    instance = f"herder-test-{uuid.uuid4().hex[:8]}"
    sharings = [SlotSharing(_redis_url(), interval=interval, instance=instance) for _ in range(2)]
    slots = [
        Slots(
            f"shared{uuid.uuid4().hex[:6]}",
            per_client="HERDER_TEST_SHARED_PER_CLIENT",
            total="HERDER_TEST_SHARED_TOTAL",
            queue="HERDER_TEST_SHARED_QUEUE",
            queue_wait="HERDER_TEST_SHARED_WAIT",
        )
        for _ in range(2)
    ]
    slots[1].name = slots[0].name  # one kind of slot, in two processes
    return sharings, slots


def exchange(sharings, slots) -> None:
    for sharing, one in zip(sharings, slots, strict=True):
        sharing.exchange([one])


def test_a_client_holds_its_limit_in_all_processes_together(limits):
    sharings, (here, there) = two_processes()
    here.acquire(CLIENT)
    here.acquire(CLIENT)
    there.acquire("addr:198.51.100.71")  # another client is not counted against it
    exchange(sharings, (here, there))
    exchange(sharings, (here, there))

    with pytest.raises(TooManyRequests):
        there.acquire(CLIENT)
    here.release(CLIENT)
    exchange(sharings, (here, there))
    there.acquire(CLIENT)  # one freed elsewhere: room here


def test_a_waiter_is_let_in_when_the_client_frees_a_slot_elsewhere(limits):
    sharings, (here, there) = two_processes()
    here.acquire(CLIENT)
    here.acquire(CLIENT)
    exchange(sharings, (here, there))

    async def scenario():
        waiting = asyncio.ensure_future(there.wait(CLIENT))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # at its limit elsewhere: it waits
        here.release(CLIENT)
        await asyncio.to_thread(exchange, sharings, (here, there))
        await asyncio.wait_for(waiting, 5)

    async_to_sync(scenario)()
    assert there.held_by(CLIENT) == 1


def test_a_dead_processes_counts_are_forgotten_after_three_intervals(limits):
    sharings, (here, there) = two_processes(interval=0.2)
    here.acquire(CLIENT)
    here.acquire(CLIENT)
    exchange(sharings, (here, there))
    with pytest.raises(TooManyRequests):
        there.acquire(CLIENT)

    time.sleep(0.7)  # `here` died: it writes no more
    sharings[1].exchange([there])
    there.acquire(CLIENT)
    key = sharings[1].prefix + there.name
    assert list(redis.Redis.from_url(_redis_url()).hkeys(key)) == [sharings[1].me.encode()]


@pytest.mark.docker
def test_two_herds_hold_one_clients_sockets_together(deployment):  # noqa: F811
    limits = {"HERDER_WS_MAX_PER_CLIENT": "2", "HERDER_SLOTS_SHARE_INTERVAL": "0.2"}
    one, other = deployment.start("a", **limits), deployment.start("b", **limits)
    query = urllib.parse.urlencode({"type": "python"})
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(ws_connect(f"{one.ws}/minion/v1/connect/herder-test-shared-1?{query}"))
        stack.enter_context(ws_connect(f"{one.ws}/minion/v1/connect/herder-test-shared-2?{query}"))
        time.sleep(1)  # a few exchanges
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(f"{other.ws}/minion/v1/connect/herder-test-shared-3?{query}")
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body)["code"] == "too_many_requests"
        first.close()
        assert wait_for(lambda: _opens(f"{other.ws}/minion/v1/connect/herder-test-shared-4?{query}"), 10)


def _opens(url: str) -> bool:
    try:
        with ws_connect(url):
            return True
    except InvalidStatus:
        return False
